"""`fpt reproduce`: run an experiment matrix (rows x tasks x seeds x learning rates).

A matrix is a YAML file (see configs/): a name, the paper table it mirrors,
its tasks, and its rows, each a set of TrainConfig keys. Every run lives in
`OUT/runs/<row>/<task>/lr<lr>-seed<seed>/`; a rerun skips runs that have a
result and resumes runs that have a checkpoint, so a killed sweep continues
where it stopped. Diverged runs are recorded (status "diverged", last good
accuracy) and the sweep goes on. Reports are made by `fpt.paper.report` from the
run directories alone.
"""
from __future__ import annotations

import json
import re
import shutil
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from fpt.paper.budgets import TaskBudget, get_budget
from fpt.core.config import TrainConfig, from_dict
from fpt.core.errors import FPTError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
MATRIX_KEYS = {"name", "description", "paper_table", "tasks", "rows", "defaults"}
ROW_KEYS = {"name", "paper_row", "config", "tasks"}


@dataclass(frozen=True)
class Row:
    name: str
    config: dict
    paper_row: str | None = None
    tasks: tuple[str, ...] | None = None  # a row the paper ran on some tasks only (the 3-layer transformer)

    def covers(self, task: str) -> bool:
        return self.tasks is None or task in self.tasks

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")


@dataclass(frozen=True)
class Matrix:
    name: str
    tasks: tuple[str, ...]
    rows: tuple[Row, ...]
    paper_table: str | None = None
    description: str = ""
    defaults: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PlannedRun:
    row: Row
    task: str
    seed: int
    lr: float
    run_dir: Path
    config: TrainConfig | None  # None when the budget does not cover the task
    skip_reason: str = ""


def find_matrix(ref: str) -> Path:
    """A path, or a name under configs/ (`table1` -> configs/table1.yaml)."""
    p = Path(ref)
    if p.is_file():
        return p
    for candidate in (CONFIG_DIR / f"{ref}.yaml", Path("configs") / f"{ref}.yaml"):
        if candidate.is_file():
            return candidate
    names = sorted(q.stem for q in CONFIG_DIR.glob("*.yaml") if "rows" in (yaml.safe_load(q.read_text()) or {}))
    raise FPTError(f"no experiment matrix {ref!r}: give a YAML path or one of: {', '.join(names)}")


def load_matrix(ref: str) -> Matrix:
    path = find_matrix(ref)
    data = yaml.safe_load(path.read_text()) or {}
    unknown = set(data) - MATRIX_KEYS
    if unknown or "rows" not in data or "tasks" not in data:
        raise FPTError(f"{path}: a matrix needs 'tasks' and 'rows' (unknown keys: {sorted(unknown) or 'none'})")
    rows = []
    for r in data["rows"]:
        bad = set(r) - ROW_KEYS
        if bad or "name" not in r:
            raise FPTError(f"{path}: each row needs a 'name' (unknown row keys: {sorted(bad) or 'none'})")
        row_tasks = r.get("tasks")
        if row_tasks is not None and (not isinstance(row_tasks, list) or set(row_tasks) - set(data["tasks"])):
            raise FPTError(f"{path}: row {r['name']!r}: 'tasks' must list some of the matrix's tasks "
                           f"({', '.join(data['tasks'])}), got {row_tasks!r}")
        rows.append(Row(name=r["name"], config=dict(r.get("config") or {}), paper_row=r.get("paper_row"),
                        tasks=tuple(row_tasks) if row_tasks is not None else None))
    return Matrix(name=data.get("name", path.stem), tasks=tuple(data["tasks"]), rows=tuple(rows),
                  paper_table=data.get("paper_table"), description=data.get("description", ""),
                  defaults=dict(data.get("defaults") or {}))


def plan(matrix: Matrix, *, budget: str, seeds: int, out: Path, backbone: str | None = None,
         lrs: list[float] | None = None, rows: list[str] | None = None,
         tasks: list[str] | None = None) -> list[PlannedRun]:
    """Every run of the matrix; `rows` / `tasks` (names) keep a subset, the rest are listed as skipped."""
    budgets = get_budget(budget)
    for wanted, have, what in ((rows, [r.name for r in matrix.rows], "row"), (tasks, matrix.tasks, "task")):
        unknown = sorted(set(wanted or []) - set(have))
        if unknown:
            raise FPTError(f"matrix {matrix.name!r} has no {what} {', '.join(map(repr, unknown))}; "
                           f"it has: {', '.join(have)}")
    runs = []
    for row in matrix.rows:
        for task in matrix.tasks:
            tb: TaskBudget | None = budgets.get(task)
            if (rows and row.name not in rows) or (tasks and task not in tasks) or not row.covers(task):
                tb = None
            for seed in range(seeds):
                for lr in lrs or [None]:
                    values = {**matrix.defaults, **row.config, "task": task, "seed": seed}
                    if backbone and "backbone" not in row.config:
                        values["backbone"] = backbone
                    if lr is not None:
                        values["lr"] = lr
                    elif tb is not None and tb.lr is not None:
                        values.setdefault("lr", tb.lr)
                    lr_value = float(values.get("lr", TrainConfig.lr))
                    run_dir = out / "runs" / row.slug / task / f"lr{lr_value:g}-seed{seed}"
                    if tb is None:
                        why = (f"budget {budget!r} does not cover {task}" if task not in budgets
                               else f"row {row.name!r} covers only {', '.join(row.tasks)}" if not row.covers(task)
                               else "left out by --rows / --tasks")
                        runs.append(PlannedRun(row, task, seed, lr_value, run_dir, None, why))
                        continue
                    values.update(steps=tb.steps, eval_every=tb.eval_every, run_dir=str(run_dir))
                    values.setdefault("batch_size", tb.batch_size)
                    if tb.precision:
                        values.setdefault("precision", tb.precision)
                    if tb.lr_schedule:
                        values.setdefault("lr_schedule", tb.lr_schedule)
                        values.setdefault("warmup_steps", tb.warmup_steps)
                    if tb.dropout is not None:
                        values.setdefault("dropout", tb.dropout)
                    if int(values.get("warmup_steps", 0)) >= tb.steps:  # a row's warm-up in a short budget (smoke)
                        values["warmup_steps"] = tb.steps // 10
                    if tb.task_options:
                        values["task_options"] = {**tb.task_options, **values.get("task_options", {})}
                    try:
                        cfg = from_dict(values)
                    except FPTError as e:  # a typo in a matrix must not cost a sweep
                        raise FPTError(f"matrix {matrix.name!r}, row {row.name!r}, task {task}: {e}") from e
                    runs.append(PlannedRun(row, task, seed, lr_value, run_dir, cfg))
    return runs


def select_lr(records: list[dict]) -> dict[tuple[str, str], float]:
    """Per (row, task): the learning rate with the best mean validation accuracy over the seeds every rate
    of the cell has (seed 0 alone when only the chosen rate got more: `--seeds-at-chosen-rate`, whose
    extra seeds must not re-choose the rate), over all its seeds where the rates share none."""
    by_cell: dict[tuple[str, str], dict[float, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        if r.get("best_val_accuracy") is not None:
            by_cell[(r["row_slug"], r["task"])][r["lr"]][r.get("seed", 0)] = r["best_val_accuracy"]
    chosen = {}
    for cell, lrs in by_cell.items():
        shared = set.intersection(*(set(by_seed) for by_seed in lrs.values()))

        def score(lr: float) -> float:
            by_seed = lrs[lr]
            return statistics.mean(by_seed[s] for s in shared) if shared else statistics.mean(by_seed.values())

        chosen[cell] = max(lrs, key=score)
    return chosen


def seed_zero_choice(runs: list[PlannedRun]) -> dict[tuple[str, str], float]:
    """Per (row slug, task): the rate whose seed-0 run validated best, by the report's rule
    (`select_lr`); a cell is left out while any of its seed-0 runs has no result."""
    records, waiting = [], set()
    for r in runs:
        if r.seed != 0 or r.config is None:
            continue
        try:
            best = json.loads((r.run_dir / "result.json").read_text()).get("best_val_accuracy")
        except (OSError, ValueError):
            best = None
        if best is None:
            waiting.add((r.row.slug, r.task))
        else:
            records.append({"row_slug": r.row.slug, "task": r.task, "lr": r.lr, "seed": 0, "best_val_accuracy": best})
    return {cell: lr for cell, lr in select_lr(records).items() if cell not in waiting}


def at_chosen_rate(runs: list[PlannedRun]) -> list[PlannedRun]:
    """`--seeds-at-chosen-rate`: every rate at seed 0, the other seeds only at the rate seed 0 chose on
    validation (tune on one seed, then replicate the winner); the rest are listed as skipped. Call it again
    once seed 0's runs have finished: until then a cell's other seeds wait."""
    choice = seed_zero_choice(runs)
    kept = []
    for r in runs:
        if r.seed == 0 or r.config is None:
            kept.append(r)
            continue
        lr = choice.get((r.row.slug, r.task))
        if lr is None:
            kept.append(replace(r, config=None, skip_reason="waits for seed 0 of every rate to choose the rate"))
        elif lr != r.lr:
            kept.append(replace(r, config=None, skip_reason=f"seed 0 chose lr {lr:g} on validation"))
        else:
            kept.append(r)
    return kept


def _config_key(cfg: TrainConfig) -> str:
    """A run's config as one string, every key but where it is written and its precision (a run's config.yaml
    holds the precision `auto` resolved to on its host: reuse_finished compares it apart)."""
    values = cfg.to_dict()
    values.pop("run_dir", None)
    values.pop("precision", None)
    return json.dumps(values, sort_keys=True, default=str)


def finished_configs(sources: list[Path]) -> dict[str, list[tuple[str, Path]]]:
    """`--reuse`'s index, read once: the finished runs of other sweeps' --out folders by config key, each with
    the precision it ran in. A folder without runs/ is refused (before a sweep writes anything)."""
    index: dict[str, list[tuple[str, Path]]] = {}
    for source in sources:
        if not (source / "runs").is_dir():
            raise FPTError(f"--reuse {source}: no runs/ folder there; give the --out folder of another sweep")
        for result in sorted(source.glob("runs/*/*/*/result.json")):
            try:
                if json.loads(result.read_text()).get("status") != "finished":
                    continue
                cfg = from_dict(yaml.safe_load((result.parent / "config.yaml").read_text()) or {})
            except (OSError, ValueError, yaml.YAMLError, FPTError):
                continue  # a run it cannot read is not one to copy
            index.setdefault(_config_key(cfg), []).append((cfg.precision, result.parent))
    return index


def reuse_finished(runs: list[PlannedRun], index: dict[str, list[tuple[str, Path]]], *,
                   copy: bool = True) -> list[tuple[PlannedRun, Path]]:
    """`--reuse`: each planned run not started yet whose config a finished run in `index` (`finished_configs`)
    already has, paired with that run: every key but run_dir the same, and the precision too unless the plan
    says `auto` (which takes what auto chose on that run's host). With `copy`, its record (config.yaml,
    metrics.jsonl, result.json with `copied_from`) is copied in, so the run counts as done. A matrix whose
    rows repeat another's (pretraining's Pretrained and Random init are table1's FPT and Random init) then
    shows them beside its own rows without training them again."""
    from fpt.core.files import write_json_atomic

    found = []
    for run in runs:
        if run.config is None or run_state(run) != "todo":
            continue
        # `auto` takes a run of any precision: auto chose it on that run's host, as it would on this one's
        source = next((path for precision, path in index.get(_config_key(run.config), [])
                       if run.config.precision in ("auto", precision)
                       and path.resolve() != run.run_dir.resolve()), None)
        if source is None:
            continue
        if copy:
            run.run_dir.mkdir(parents=True, exist_ok=True)
            for name in ("config.yaml", "metrics.jsonl"):
                shutil.copyfile(source / name, run.run_dir / name)
            result = {**json.loads((source / "result.json").read_text()), "copied_from": str(source)}
            write_json_atomic(run.run_dir / "result.json", result)  # last: result.json makes the run done
        found.append((run, source))
    return found


def run_state(run: PlannedRun) -> str:
    if (run.run_dir / "result.json").exists():
        return "done"
    if (run.run_dir / "checkpoint.pt").exists():
        return "partial"
    return "todo"


def steps_done(run: PlannedRun) -> int:
    """Training steps a partial run has already logged (its last evaluation in metrics.jsonl; 0 if none)."""
    path = run.run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    last = 0
    for line in path.read_text().splitlines():
        try:
            last = max(last, int(json.loads(line).get("step", 0)))
        except (ValueError, AttributeError):
            continue  # a line cut short by a kill: the checkpoint decides where a resume starts anyway
    return last


def label(run: PlannedRun) -> str:
    return f"{run.row.name} / {run.task} / lr {run.lr:g} / seed {run.seed}"


def record_error(run: PlannedRun, message: str) -> None:
    run.run_dir.mkdir(parents=True, exist_ok=True)
    (run.run_dir / "error.json").write_text(json.dumps({"error": message}) + "\n")


def train_run(run: PlannedRun, *, progress: bool = True) -> str:
    """Train one planned run from where it stands; returns one line saying how it ended.

    The run directory is locked (fpt.core.files.hold_folder) before its state is read: a run another process
    is training (a second sweep, a Ray task's straggler) is skipped, never trained twice at once. A
    partial run resumes from its checkpoint; one without a checkpoint starts over (what an attempt killed
    before its first checkpoint left is deleted). Failures are recorded in the run directory (result.json
    for a diverged run, error.json otherwise), never raised, so a sweep goes on. Used by `execute` and by
    every Ray task (fpt/paper/ray_sweep.py).
    """
    from fpt.run.launch import train
    from fpt.core.files import FolderBusy, hold_folder

    try:
        with hold_folder(run.run_dir, what="run directory", hint="or let that process finish it"):
            state = run_state(run)
            if state == "done":
                return "done already, skipped"
            started = time.perf_counter()
            try:
                result = train(run.config, resume=state == "partial", overwrite=state == "todo", progress=progress)
                return f"test accuracy {result['test_accuracy']:.4f} ({time.perf_counter() - started:.0f}s)"
            except FPTError as e:
                if (run.run_dir / "result.json").exists():  # diverged: recorded, the sweep goes on
                    return str(e)
                record_error(run, str(e))
                return f"failed: {e}"
    except FolderBusy as e:
        return f"skipped: {e}"
    except FPTError as e:  # the run directory cannot be made
        return f"failed: {e}"


def execute(runs: list[PlannedRun], *, progress: bool = True) -> None:
    """Run every planned run in order, skipping finished ones, resuming partial ones."""
    todo = [r for r in runs if r.config is not None]
    for i, run in enumerate(todo, 1):
        state = run_state(run)
        if state != "done":
            print(f"[{i}/{len(todo)}] {label(run)}: {'resuming' if state == 'partial' else 'starting'}",
                  file=sys.stderr)
        print(f"[{i}/{len(todo)}] {label(run)}: {train_run(run, progress=progress)}", file=sys.stderr)


def estimate(runs: list[PlannedRun], *, timed_steps: int = 3) -> list[dict]:
    """Seconds per training step for each distinct (row, task), measured on this device, and each run's
    estimate for the steps it has left (a partial run's remaining steps; pass only runs not done).

    Steps run on random inputs of the task's shape (the task spec's sequence length, token width or
    vocabulary, and targets), so a plan can be priced before any dataset is downloaded; the compute
    of a step does not depend on the values in it (padded tasks are timed at their maximum length).
    """
    import torch

    from fpt.models.factory import build_model
    from fpt.models.precision import autocast
    from fpt.models.precision import resolve as resolve_precision
    from fpt.tasks import task_from_config
    from fpt.run.step import loss_and_correct
    from fpt.core.host import pick_device

    measured: dict[tuple[str, str], float] = {}
    rows = []
    for run in runs:
        if run.config is None:
            continue
        cfg, key = run.config, (run.row.slug, run.task)
        if key not in measured:
            try:
                spec = task_from_config(cfg).spec
                device = pick_device(cfg.device)
                model = build_model(cfg, spec)[0].to(device).train()
                precision, _ = resolve_precision(cfg.precision, device, model.width)
                trainable = [p for p in model.parameters() if p.requires_grad]
                opt = torch.optim.Adam(trainable, lr=cfg.lr) if trainable else None
                batch = _random_batch(spec, cfg.batch_size, torch.Generator().manual_seed(0)).to(device)
                times = []
                for _ in range(timed_steps + 1):  # the first step warms up
                    t = time.perf_counter()
                    with autocast(precision, device):
                        logits = model(batch.x, batch.lengths)
                    loss, _ = loss_and_correct(logits, batch.y)
                    if opt is not None:
                        opt.zero_grad()
                        loss.backward()
                        opt.step()
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    times.append(time.perf_counter() - t)
                measured[key] = sum(times[1:]) / timed_steps
            except FPTError as e:
                measured[key] = float("nan")
                print(f"cannot time {run.row.name} / {run.task}: {e}", file=sys.stderr)
        left = run.config.steps - (steps_done(run) if run_state(run) == "partial" else 0)
        rows.append({"row": run.row.name, "task": run.task, "seed": run.seed, "lr": run.lr,
                     "steps": left, "s_per_step": measured[key],
                     "est_s": measured[key] * left * 1.1})  # +10% for evaluation
    return rows


def _random_batch(spec, batch_size: int, gen) -> "Batch":
    """A batch of the task's shape with random values (for timing only)."""
    import torch

    from fpt.tasks import Batch

    b, t = batch_size, spec.seq_len
    y = torch.randint(0, spec.num_classes, (b, spec.num_targets), generator=gen)
    if spec.input_kind == "tokens":
        x = torch.randint(1, spec.vocab_size, (b, t), generator=gen)  # (B, T) ids, 0 is padding
        return Batch(x, y, torch.full((b,), t) if spec.padded else None)
    return Batch(torch.randn((b, t, spec.token_dim), generator=gen), y)  # (B, T, D)
