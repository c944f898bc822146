"""`fpt reproduce MATRIX` and `fpt report DIR`: run a paper table's matrix, write tables and plots."""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from fpt.paper.budgets import BUDGETS


def _lrs(text: str | None) -> list[float] | None:
    from fpt.core.errors import FPTError

    if not text:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise FPTError(f"--lr-sweep expects comma-separated numbers, got {text!r}") from e


def _names(text: str | None) -> list[str] | None:
    return [v.strip() for v in text.split(",") if v.strip()] if text else None


def add_parser(sub) -> None:
    p = sub.add_parser("reproduce", help="run an experiment matrix (a paper table)", description=__doc__)
    p.add_argument("matrix", help="a name under configs/ (table1, params, ...) or a YAML path")
    p.add_argument("--budget", default="smoke", help=f"{' | '.join(BUDGETS)} (fpt/paper/budgets.py)")
    p.add_argument("--backbone", help="backbone for rows that do not name one (default: minilm)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per cell (0 .. N-1)")
    p.add_argument("--out", help="output folder (default: results/<matrix>-<budget>)")
    p.add_argument("--lr-sweep", help="comma-separated learning rates; each cell's is chosen on validation")
    p.add_argument("--seeds-at-chosen-rate", action="store_true",
                   help="with --lr-sweep and --seeds N: every rate at seed 0, seeds 1..N-1 only at the rate seed 0 "
                        "chose on validation")
    p.add_argument("--reuse", metavar="DIRS",
                   help="comma-separated --out folders of other sweeps: a planned run whose config (every key but "
                        "run_dir) a finished run there has is copied from it, not trained (result.json: copied_from)")
    p.add_argument("--rows", help="comma-separated row names to run (default: all); the rest are skipped")
    p.add_argument("--tasks", help="comma-separated tasks to run (default: all the budget covers)")
    p.add_argument("--dry-run", action="store_true", help="print the planned runs and a time estimate")
    p.add_argument("--quiet", action="store_true", help="no per-step progress bars")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run each run as a Ray task (pip install 'fpt[ray]'): no ADDRESS starts a local Ray "
                        "instance; auto, HOST:PORT or ray://HOST:PORT uses that cluster (--out on shared storage)")
    p.add_argument("--ray-cpus", type=float, help="CPUs per run on Ray (default 1)")
    p.add_argument("--ray-gpus", type=float,
                   help="GPUs per run on Ray (default 1 where the cluster has GPUs, else 0; 0.5 packs two runs)")
    p.add_argument("--ray-retries", type=int, default=3,
                   help="times Ray retries a run whose worker died; it resumes from its checkpoint (default 3)")
    p.set_defaults(func=run_reproduce)

    r = sub.add_parser("report", help="rebuild results.csv, table.md and plots from a reproduce folder")
    r.add_argument("out", help="the --out folder of `fpt reproduce`")
    r.add_argument("--readme", metavar="FILE",
                   help="also rewrite FILE's generated block for this folder (README.md: its results table)")
    r.set_defaults(func=run_report)


def _finished_line(run) -> str:
    """What a finished run's result.json says, in a few words."""
    import json

    try:
        result = json.loads((run.run_dir / "result.json").read_text())
        return f"test accuracy {float(result['test_accuracy']):.4f}"
    except (OSError, ValueError, KeyError, TypeError):
        return "result.json unreadable"


def run_reproduce(args: argparse.Namespace) -> int:
    from fpt.core.errors import FPTError
    from fpt.paper.reproduce import (at_chosen_rate, estimate, execute, find_matrix, finished_configs, load_matrix,
                                     plan, reuse_finished, run_state)
    from fpt.core.files import hold_folder, write_json_atomic

    if args.seeds < 1:
        raise FPTError("--seeds must be at least 1")
    if args.seeds_at_chosen_rate and (len(_lrs(args.lr_sweep) or []) < 2 or args.seeds < 2):
        raise FPTError("--seeds-at-chosen-rate needs --lr-sweep with two rates or more and --seeds 2 or more")
    reuse = finished_configs([Path(d) for d in _names(args.reuse) or []])  # read once; before anything is written
    sweep = None  # fpt.paper.ray_sweep, with --ray
    if args.ray is not None and not args.dry_run:
        from fpt.paper import ray_sweep as sweep

        sweep.require_ray()  # before anything is planned or written
    matrix = load_matrix(args.matrix)
    out = Path(args.out or f"results/{matrix.name}-{args.budget}")
    runs = full_plan = plan(matrix, budget=args.budget, seeds=args.seeds, out=out, backbone=args.backbone,
                            lrs=_lrs(args.lr_sweep), rows=_names(args.rows), tasks=_names(args.tasks))
    if args.seeds_at_chosen_rate:
        runs = at_chosen_rate(runs)  # as things stand: seeds past 0 wait where seed 0 has not chosen yet
    planned = [r for r in runs if r.config is not None]
    print(f"{matrix.name}: {len(matrix.rows)} rows x {len(matrix.tasks)} tasks x {args.seeds} seed(s)"
          f"{' x ' + str(len(_lrs(args.lr_sweep))) + ' lrs' if args.lr_sweep else ''}: {len(planned)} runs "
          f"planned, {len(runs) - len(planned)} skipped (budget {args.budget}) -> {out}")
    def print_skipped(these):
        for r in these:
            if r.config is None:
                print(f"  skip {r.row.name} / {r.task} / seed {r.seed}{f' / lr {r.lr:g}' if args.lr_sweep else ''}: "
                      f"{r.skip_reason}")

    print_skipped(runs)
    if args.dry_run:
        copies = set()
        for r, source in reuse_finished(planned, reuse, copy=False):
            print(f"  copy {r.row.name} / {r.task} / seed {r.seed} / lr {r.lr:g} from {source} (--reuse)")
            copies.add(r.run_dir)
        # a sweep resumes: finished runs cost nothing, partial ones only their remaining steps
        finished = [r for r in planned if run_state(r) == "done"]
        for r in finished:
            print(f"  done {r.row.name} / {r.task} / seed {r.seed} / lr {r.lr:g}: {_finished_line(r)}")
        from fpt.models.precision import other_runnable_threads

        total = 0.0
        busy_before = other_runnable_threads()
        for e in estimate([r for r in planned if run_state(r) != "done" and r.run_dir not in copies]):
            total += e["est_s"]
            print(f"  {e['row']:<28} {e['task']:<16} seed {e['seed']} lr {e['lr']:<8g} {e['steps']:>7} steps "
                  f"x {e['s_per_step'] * 1000:8.1f} ms = {e['est_s'] / 60:8.1f} min")
        print(f"estimated total: {total / 3600:.2f} h on this device for the "
              f"{len(planned) - len(finished) - len(copies)} runs "
              f"not finished (training steps timed here, +10% for eval)")
        # the same test as the precision probe's: others ran before and after, so they ran throughout
        busy = min(busy_before, other_runnable_threads())
        if busy:
            print(f"note: {busy} thread(s) of other processes were running on this host while the steps were "
                  f"timed, so these times are too long; time again when nothing else runs")
        return 0
    # one sweep per folder at a time (each run directory in it is locked again by the run itself); a
    # folder this call creates is removed again if the sweep stops before writing into it
    with hold_folder(out, what="sweep folder", hint="or choose another --out"):
        ray = None
        if sweep is not None and any(run_state(r) != "done" for r in planned):
            ray = sweep.connect(args.ray)  # an unreachable cluster: one line, nothing written
        shutil.copyfile(find_matrix(args.matrix), out / "matrix.yaml")
        write_json_atomic(out / "sweep.json", {"matrix": matrix.name, "budget": args.budget, "seeds": args.seeds,
                                               "backbone": args.backbone, "lr_sweep": _lrs(args.lr_sweep),
                                               **({"seeds_at_chosen_rate": True} if args.seeds_at_chosen_rate
                                                  else {})})
        done = sum(run_state(r) == "done" for r in planned)
        if done:
            print(f"{done} of {len(planned)} runs already finished: skipped")

        def run_all(these):
            for r, source in reuse_finished(these, reuse):
                print(f"copied {r.row.name} / {r.task} / seed {r.seed} / lr {r.lr:g} from {source}: the same config")
            if sweep is not None:
                sweep.execute(ray, these, address=args.ray, out=out, cpus=args.ray_cpus, gpus=args.ray_gpus,
                              retries=args.ray_retries)
            else:
                execute(these, progress=not args.quiet)

        if args.seeds_at_chosen_rate:  # two rounds: seed 0 at every rate, then the other seeds at the one it chose
            run_all([r for r in runs if r.seed == 0])
            later = [r for r in at_chosen_rate(full_plan) if r.seed > 0]
            print_skipped(later)
            run_all(later)
        else:
            run_all(runs)
        from fpt.paper.report import report

        print(report(out, budget=args.budget))
    print(f"wrote {out / 'results.csv'}, {out / 'table.md'} and plots")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from fpt.core.errors import FPTError
    from fpt.paper.report import README_START, report, update_readme

    print(report(Path(args.out)))
    if args.readme:
        if not update_readme(Path(args.readme), args.out):
            raise FPTError(f"{args.readme} has no generated block for {args.out}: add the two lines "
                           f"{README_START.format(out=args.out)!r} and its end marker where the table goes")
        print(f"updated the table for {args.out} in {args.readme}")
    return 0
