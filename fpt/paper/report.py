"""Tables and plots from finished run directories (`fpt report DIR`).

Reads OUT/runs/<row>/<task>/<lr-seed>/{result.json,metrics.jsonl,error.json}
and OUT/matrix.yaml; writes OUT/results.csv, OUT/table.md and PNG plots.
A cell's test accuracy is that of the best-validation weights; beside it, the
training accuracy at the same step and the gap between the two.
Nothing here trains, and no figure is typed by hand: ours come from the run
files, the paper's from fpt/paper/reference/paper_results.csv. The tables and curves
need the run files alone; the attention figures (fpt/paper/attention.py `TASK_FIGURES`: Bit
XOR's attention maps) may rebuild its trained models, where their checkpoints
are on this machine, and are skipped where they are not.
"""
from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

from fpt.paper.budgets import budget_cells
from fpt.core.errors import FPTError
from fpt.models.bodies import body_summary
from fpt.paper.figures import plot_learning_curves, plot_steps_to_converge
from fpt.paper.reproduce import select_lr
from fpt.run.files import read_metrics

REFERENCE = Path(__file__).resolve().parent / "reference" / "paper_results.csv"
CSV_FIELDS = ["row", "task", "seed", "lr", "status", "steps", "test_accuracy", "val_accuracy",
              "best_val_accuracy", "test_accuracy_at_best_val", "train_accuracy", "train_accuracy_at_best",
              "generalization_gap", "trainable_params",
              "total_params", "wall_time_s", "backbone", "init", "train", "precision", "majority_test_accuracy",
              "weights_sha256", "device", "run_dir", "error"]


def paper_column(task: str) -> str:
    """The reference file's column for `task`: its registry entry's `paper_column` ("" where it has none)."""
    from fpt.tasks import TASKS

    return (TASKS.get(task).paper_column or "") if task in TASKS else ""


def paper_figure(paper_row: str | None, task: str) -> str:
    if not paper_row or not REFERENCE.exists():
        return ""
    with open(REFERENCE) as f:
        for r in csv.DictReader(f):
            if r["row"] == paper_row:
                return r.get(paper_column(task), "") or ""
    return ""


def cell_test_accuracy(rec: dict) -> float | None:
    """The test accuracy a cell reports: that of the best-validation weights. Runs that recorded
    `test_accuracy_at_best_val` (the test accuracy measured at the best validation step) have it there;
    later runs write it as `test_accuracy` itself."""
    at_best = rec.get("test_accuracy_at_best_val")
    return at_best if at_best is not None else rec.get("test_accuracy")


def train_accuracy_at_best(run_dir: Path, result: dict) -> float | None:
    """The training accuracy at the best validation step: metrics.jsonl's `train_accuracy` (over the
    training batches since the evaluation before it) at `best_step`, else result.json's."""
    best = result.get("best_step")
    if best is not None:
        for rec in read_metrics(run_dir / "metrics.jsonl"):
            if rec.get("step") == best and rec.get("train_accuracy") is not None:
                return rec["train_accuracy"]
    return result.get("train_accuracy")


def collect(out: Path) -> list[dict]:
    """One record per run directory under OUT/runs (finished, diverged or failed)."""
    records = []
    for run_dir in sorted((out / "runs").glob("*/*/*")):
        row_slug, task = run_dir.parent.parent.name, run_dir.parent.name
        lr, _, seed = run_dir.name.removeprefix("lr").partition("-seed")
        rec = {"row_slug": row_slug, "task": task, "lr": float(lr), "seed": int(seed), "run_dir": str(run_dir)}
        if (run_dir / "result.json").exists():
            res = json.loads((run_dir / "result.json").read_text())
            rec.update({k: res.get(k) for k in CSV_FIELDS if k in res and k != "run_dir"})  # where it is now
            rec["train"] = ",".join(res.get("train", []))
            rec.update({k: res.get(k) for k in ("architecture", "host", "precision", "precision_auto", "data_notes",
                                                 "majority_test_accuracy", "best_step", "param_groups", "split_sizes",
                                                 "weights_sha256", "copied_from")})
            train = res.get("train_accuracy_at_best")  # where the run recorded it, else from its metrics
            if train is None:
                train = train_accuracy_at_best(run_dir, res)
            test = cell_test_accuracy(rec)
            rec["train_accuracy_at_best"] = train
            rec["generalization_gap"] = round(train - test, 6) if train is not None and test is not None else None
        elif (run_dir / "error.json").exists():
            rec.update(status="error", error=json.loads((run_dir / "error.json").read_text())["error"])
        else:
            rec.update(status="incomplete")
        records.append(rec)
    return records


def _load_matrix(out: Path):
    from fpt.paper.reproduce import load_matrix

    path = out / "matrix.yaml"
    if not path.exists():
        raise FPTError(f"{out} holds no matrix.yaml: is it the --out folder of `fpt reproduce`?")
    return load_matrix(str(path))


def write_csv(records: list[dict], rows_by_slug: dict, path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in records:
            w.writerow({**r, "row": rows_by_slug[r["row_slug"]].name if r["row_slug"] in rows_by_slug
                        else r["row_slug"]})


def _cell(values: list[float]) -> str:
    if not values:
        return "–"
    pct = [100 * v for v in values]
    if len(pct) == 1:
        return f"{pct[0]:.1f} (n=1)"
    return f"{statistics.mean(pct):.1f} ± {statistics.stdev(pct):.1f} (n={len(pct)})"


def _target(budget: str | None, task: str) -> float | None:
    tb = budget_cells(budget).get(task)
    return tb.target_accuracy if tb is not None else None


def shown_tasks(matrix, records: list[dict], budget: str | None) -> tuple[list[str], list[str]]:
    """(the matrix's tasks the tables show, the ones left out): a task the budget does not cover and no
    run measured is one note under the tables, not a column of "not run" cells."""
    if not budget:
        return list(matrix.tasks), []
    covered = budget_cells(budget)
    measured = {r["task"] for r in records}
    shown = [t for t in matrix.tasks if t in covered or t in measured]
    return shown, [t for t in matrix.tasks if t not in shown]


def _left_out_note(budget: str | None, left_out: list[str]) -> str:
    return f"Not in budget {budget} (fpt/paper/budgets.py), so not run: {', '.join(left_out)}." if left_out else ""


def summarize(matrix, records: list[dict], budget: str | None) -> dict:
    """Per (row, task): the cell's text and what it rests on; per task: the majority-class baseline.

    A cell is a measured number (mean ± std over seeds), marked † where no seed's validation accuracy
    reached the budget's target (not converged at this budget), or "not run: <reason>".
    """
    chosen = select_lr(records)
    cells, notes = {}, []
    for row in matrix.rows:
        for task in matrix.tasks:
            rs = [r for r in records if r["row_slug"] == row.slug and r["task"] == task]
            lr = chosen.get((row.slug, task))
            done = [r for r in rs if cell_test_accuracy(r) is not None and (lr is None or r["lr"] == lr)
                    and r.get("status") in ("finished", "early_stopped")]
            diverged = [r for r in rs if r.get("status") == "diverged"]
            errors = [r for r in rs if r.get("status") == "error"]
            target = _target(budget, task)
            if done:
                text = _cell([cell_test_accuracy(r) for r in done])
                if target is not None and all((r.get("best_val_accuracy") or 0) < target for r in done):
                    text += " †"
            elif errors:
                text = "not run: failed"
                notes.append(f"- {row.name} / {task}: {errors[0]['error']}")
            elif diverged:
                text = "diverged"
            elif not rs and not row.covers(task):  # the paper ran this row on some tasks only
                text = "–"
            elif target is None and not rs:
                text = f"not run: budget {budget} does not cover {task}" if budget else "not run"
            else:  # planned, or in progress on some machine: the same sweep runs or resumes it
                text = "not run yet"
            if diverged and done:
                text += f" ({len(diverged)} diverged)"
            if lr is not None and len({r['lr'] for r in rs}) > 1:
                text += f" @lr {lr:g}"
            with_train = [r for r in done if r.get("train_accuracy_at_best") is not None]
            cells[(row.name, task)] = {"text": text, "paper": paper_figure(row.paper_row, task) if row.covers(task) else "",
                                       "minutes": [r["wall_time_s"] / 60 for r in done if r.get("wall_time_s")],
                                       "train": [r["train_accuracy_at_best"] for r in with_train],
                                       "test": [cell_test_accuracy(r) for r in with_train]}
    majority = {}
    for task in matrix.tasks:
        values = [r["majority_test_accuracy"] for r in records
                  if r["task"] == task and r.get("majority_test_accuracy") is not None]
        majority[task] = f"{100 * values[0]:.1f}" if values else "–"
    tasks, left_out = shown_tasks(matrix, records, budget)
    return {"cells": cells, "majority": majority, "notes": notes, "tasks": tasks, "left_out": left_out}


def test_splits(records: list[dict]) -> dict[str, tuple[str, int]]:
    """task -> (name, size) of the split its test column is, where the task names one (homology: TAPE's
    test_fold_holdout); a column headed test never silently holds another split."""
    return {r["task"]: (name, n) for r in records for name, n in (r.get("split_sizes") or {}).items()
            if name.startswith("test_") and (r.get("split_sizes") or {}).get("test") == n}


def _run_notes(matrix, records: list[dict]) -> list[str]:
    """What a reader must know to trust the numbers: each row's body, the hosts, data subsets."""
    notes = []
    for row in matrix.rows:
        mine = [r for r in records if r["row_slug"] == row.slug and r.get("architecture")]
        for body in sorted({body_summary(r["architecture"]) for r in mine}):
            runs = [r for r in mine if body_summary(r["architecture"]) == body]
            # the records say what trained (param_groups) and whether weights were loaded (weights_sha256 "none": none)
            # every group of the body trains ("unused" never runs; positions train their first seq_len rows)
            every = all(c.get("trainable") for r in runs for g, c in (r.get("param_groups") or {}).items()
                        if g != "unused" and c.get("total"))
            groups = sorted({g for r in runs for g, c in (r.get("param_groups") or {}).items() if c.get("trainable")})
            trained = "every weight trained" if every else f"training {','.join(groups)}, the rest frozen"
            inits = ", ".join(sorted({"random" if r.get("weights_sha256") == "none" else r.get("init", "?")
                                      for r in runs}))
            notes.append(f"- {row.name}: {body}; {inits} init; {trained}.")
    # host -> probe width -> the bf16 matmul rates its runs measured: hosts of one name differ 2x (wall
    # times too); rates at different widths are not comparable, and a contended probe measured the load
    hosts: dict[str, dict] = {}
    for r in records:
        if r.get("host"):
            h = f"{r['host']['cpu']} ({'native bf16' if r['host']['native_bf16'] else 'no native bf16'}"
            auto = r.get("precision_auto") or {}
            widths = hosts.setdefault(h, {})
            if auto.get("bf16_gflops") and not auto.get("contended"):
                widths.setdefault(auto.get("width"), set()).add(round(auto["bf16_gflops"]))
    precisions = sorted({r["precision"] for r in records if r.get("precision")})
    if hosts:
        def rates(by_width: dict) -> str:
            by_width = sorted(by_width.items(), key=lambda wg: wg[0] or 0)  # numerically: 384 before 1024
            return ", ".join(f"{min(g)}" + (f"-{max(g)}" if max(g) > min(g) else "") + " GFLOP/s"
                             + (f" at width {w}" if w else "") for w, g in by_width)
        described = [h + (f"; bf16 matmul {rates(w)})" if w else ")") for h, w in sorted(hosts.items())]
        varies = any(len(g) > 1 for w in hosts.values() for g in w.values())
        notes.append(f"- Measured on: {'; '.join(described)}; precision {', '.join(precisions)}."
                     + (" Wall times move with the host's rate." if varies else ""))
    copied = [r for r in records if r.get("copied_from")]
    if copied:  # `fpt reproduce --reuse`: trained once, for another matrix
        sweeps = sorted({str(Path(r["copied_from"]).parents[3]) for r in copied})
        rows = [row.name for row in matrix.rows if any(r["row_slug"] == row.slug for r in copied)]
        notes.append(f"- Copied, not trained here (`fpt reproduce --reuse`; result.json: copied_from): {len(copied)} "
                     f"run{'s' if len(copied) > 1 else ''} of {', '.join(rows)}, from finished runs with the same "
                     f"config in {', '.join(sweeps)}.")
    named_tests = {f"{task}: test is the {name} split ({n:,} examples)" for task, (name, n) in test_splits(records).items()}
    for note in sorted(named_tests | {f"{r['task']}: {n}" for r in records for n in r.get("data_notes") or []}):
        notes.append(f"- {note}.")
    return notes


def table_lines(matrix, summary: dict) -> list[str]:
    """The accuracy table: rows x tasks, each cell ours [paper: figure], then the majority baseline."""
    tasks = summary["tasks"]
    lines = ["| row | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for row in matrix.rows:
        cells = []
        for task in tasks:
            c = summary["cells"][(row.name, task)]
            cells.append(c["text"] + (f" [paper: {c['paper']}]" if c["paper"] else ""))
        lines.append(f"| {row.name} | " + " | ".join(cells) + " |")
    lines.append("| majority class (test split) | " + " | ".join(summary["majority"][t] for t in tasks) + " |")
    return lines


def train_test_cell(cell: dict) -> str:
    """"train / test / gap": mean training accuracy at the best validation step, mean test accuracy of
    the same runs (%), and their difference in points ("–" where no run measured both)."""
    if not cell["train"]:
        return "–"
    train, test = round(100 * statistics.mean(cell["train"]), 1), round(100 * statistics.mean(cell["test"]), 1)
    gap = round(train - test, 1) or 0.0  # the gap of the figures shown (never "-0.0")
    return f"{train:.1f} / {test:.1f} / {gap:+.1f}"


def train_test_lines(matrix, summary: dict) -> list[str]:
    """The train / test / gap table: rows x tasks."""
    tasks = summary["tasks"]
    lines = ["| row | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for row in matrix.rows:
        lines.append(f"| {row.name} | " + " | ".join(train_test_cell(summary["cells"][(row.name, t)])
                                                     for t in tasks) + " |")
    return lines


def write_table(matrix, records: list[dict], path: Path, *, budget: str | None = None) -> str:
    """Markdown: mean ± std test accuracy (%) over seeds per cell, the paper's figure beside it."""
    summary = summarize(matrix, records, budget)
    lines = [f"# {matrix.name}" + (f" (paper {matrix.paper_table})" if matrix.paper_table else ""), ""]
    if matrix.description:
        lines += [matrix.description, ""]
    lines += ["Test accuracy (%) of the best-validation weights, mean ± std over seeds (n = seeds); "
              "[paper: figure] is the paper's. "
              "† not converged: no seed's validation accuracy reached the budget's target"
              + (f" (budget {budget}, fpt/paper/budgets.py)" if budget else "")
              + ". Learning rate chosen per cell on validation accuracy where several were run.", ""]
    if summary["left_out"]:
        lines += [_left_out_note(budget, summary["left_out"]), ""]
    lines += table_lines(matrix, summary)
    tasks = summary["tasks"]
    lines += ["", "Train / test / gap: training accuracy (%) at the best validation step (over the training "
              "batches since the evaluation before it), the test accuracy of the same runs, and train − test "
              "in points; mean over seeds. A negative gap: the body underfits (or dropout lowers training "
              "accuracy).", ""]
    lines += train_test_lines(matrix, summary)
    lines += ["", "Wall time per run (minutes, mean over seeds):", "",
              "| row | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for row in matrix.rows:
        minutes = [summary["cells"][(row.name, t)]["minutes"] for t in tasks]
        lines.append(f"| {row.name} | " + " | ".join(f"{statistics.mean(m):.1f}" if m else "–" for m in minutes)
                     + " |")
    run_notes = _run_notes(matrix, records)
    if run_notes:
        lines += ["", "Notes:"] + run_notes
    if summary["notes"]:
        lines += ["", "Cells that failed:"] + sorted(set(summary["notes"]))
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


README_START = "<!-- fpt report {out}: generated, do not edit -->"
README_END = "<!-- end of fpt report {out} -->"


def readme_block(out: Path) -> str:
    """The README's copy of a sweep's results, from its run files (`fpt report DIR --readme`): one line
    per task (the command that measures it, ours beside the paper's per row, the majority baseline,
    minutes per run), so it reads as command -> paper figure -> our figure -> time."""
    out = Path(out)
    matrix = _load_matrix(out)
    meta = json.loads((out / "sweep.json").read_text()) if (out / "sweep.json").exists() else {}
    budget = meta.get("budget")
    records = collect(out)
    summary = summarize(matrix, records, budget)
    tested_on = {task: name for task, (name, _) in test_splits(records).items()}
    lines = ["| task | " + " | ".join(row.name for row in matrix.rows) + " | majority class | minutes a run |",
             "|---|" + "---|" * (len(matrix.rows) + 2)]
    for task in summary["tasks"]:
        cells = [summary["cells"][(row.name, task)] for row in matrix.rows]
        texts = [c["text"].replace(" (n=1)", "") + (f" [{c['paper']}]" if c["paper"] else "") for c in cells]
        minutes = [statistics.mean(c["minutes"]) for c in cells if c["minutes"]]
        span = (f"{min(minutes):.0f}" if max(minutes) - min(minutes) < 1 else f"{min(minutes):.0f}-{max(minutes):.0f}") \
            if minutes else "–"
        command = f"`fpt reproduce {matrix.name} --budget {budget} --tasks {task}`" if budget else task
        label = f"{task} (test: {tested_on[task]})" if task in tested_on else task
        lines.append(f"| {label}: {command} | " + " | ".join(texts) + f" | {summary['majority'][task]} | {span} |")
    if summary["left_out"]:
        lines += ["", _left_out_note(budget, summary["left_out"])]
    return "\n".join(lines)


def update_readme(readme: Path, out: str) -> bool:
    """Replace the generated block for `out` in `readme`; False when the README has no such block."""
    text = readme.read_text()
    start, end = README_START.format(out=out), README_END.format(out=out)
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{readme_block(Path(out))}\n{end}{tail}")
    return True


def report(out: Path, *, budget: str | None = None) -> str:
    """Write results.csv, table.md and the plots for the sweep in `out`; return the table."""
    out = Path(out)
    if not (out / "runs").is_dir():
        raise FPTError(f"{out} holds no runs/ folder: is it the --out folder of `fpt reproduce`?")
    matrix = _load_matrix(out)
    meta = json.loads((out / "sweep.json").read_text()) if (out / "sweep.json").exists() else {}
    budget = budget or meta.get("budget")
    records = collect(out)
    rows_by_slug = {r.slug: r for r in matrix.rows}
    write_csv(records, rows_by_slug, out / "results.csv")
    table = write_table(matrix, records, out / "table.md", budget=budget)
    plot_learning_curves(matrix, records, out)  # fpt/paper/figures.py
    plot_steps_to_converge(matrix, records, out, budget)
    if {"bit-xor", "mnist"} & set(matrix.tasks):  # attention figures: rebuilt from checkpoints, where present
        from fpt.paper.attention import TASK_FIGURES

        for task in matrix.tasks:
            draw = TASK_FIGURES.get(task)
            if draw is not None:
                draw(matrix, records, out)
    return table
