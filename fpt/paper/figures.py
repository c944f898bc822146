"""The report's plots, from the run files alone: learning curves (validation accuracy against steps, per task,
one line per row) and steps to the budget's target. Each figure function returns the Figure (tests inspect
its axes); a plot without data is not drawn, and one line says why."""
from __future__ import annotations

import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from fpt.paper.budgets import budget_cells
from fpt.run.files import read_metrics


def steps_to_reach(metrics_path: Path, target: float) -> int | None:
    """First evaluated step whose validation accuracy reaches `target`."""
    for rec in read_metrics(metrics_path):
        if rec.get("val_accuracy") is not None and rec["val_accuracy"] >= target:
            return rec["step"]
    return None


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fit(lo: float, hi: float, *, min_span: float, floor: float, ceil: float) -> tuple[float, float]:
    """Limits around [lo, hi] at least `min_span` wide (a little margin), kept inside [floor, ceil]."""
    pad = max(min_span - (hi - lo), 0) / 2 + 0.05 * max(hi - lo, min_span)
    lo, hi = lo - pad, hi + pad
    if lo < floor:
        lo, hi = floor, min(ceil, hi + floor - lo)
    if hi > ceil:
        lo, hi = max(floor, lo - (hi - ceil)), ceil
    return lo, hi


def learning_curve_figures(matrix, records: list[dict]) -> dict:
    """Per task with any evaluation: a Figure of validation accuracy vs gradient steps, one line per row
    (mean over seeds; runs measure the test split once, with the best-validation weights). The x axis runs
    from step 0 to the last evaluation, so a single evaluation is a point at its step, not a point in the
    middle of a 2-step axis."""
    plt = _pyplot()
    figures = {}
    for task in matrix.tasks:
        curves_by_row = []
        for row in matrix.rows:
            curves = defaultdict(list)
            for r in records:
                if r["row_slug"] == row.slug and r["task"] == task:
                    for rec in read_metrics(Path(r["run_dir"]) / "metrics.jsonl"):
                        if rec.get("val_accuracy") is not None:
                            curves[rec["step"]].append(rec["val_accuracy"])
            if curves:
                steps = sorted(curves)
                curves_by_row.append((row.name, steps, [100 * statistics.mean(curves[s]) for s in steps]))
        if not curves_by_row:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, steps, accs in curves_by_row:
            ax.plot(steps, accs, marker="o", ms=3 if len(steps) > 1 else 6, label=name)
        last = max(s for _, steps, _ in curves_by_row for s in steps)
        ax.set_xlim(0, max(last, 1) * 1.04)
        ys = [y for _, _, accs in curves_by_row for y in accs]
        ax.set_ylim(*_fit(min(ys), max(ys), min_span=4, floor=0, ceil=100.5))
        ax.set(title=f"{matrix.name}: {task}", xlabel="gradient steps", ylabel="validation accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        figures[task] = fig
    return figures


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def plot_learning_curves(matrix, records: list[dict], out: Path) -> list[Path]:
    """curves_<task>.png per task with evaluations (a stale one of a task without any is removed)."""
    figures = learning_curve_figures(matrix, records)
    for task in matrix.tasks:
        if task not in figures:
            (out / f"curves_{task}.png").unlink(missing_ok=True)
    return [_save(fig, out / f"curves_{task}.png") for task, fig in figures.items()]


def steps_to_converge_figure(matrix, records: list[dict], budget: str | None):
    """(Figure, "") of bars: gradient steps until validation accuracy first reached the budget's target,
    per row and task (mean over the seeds that reached it; "k/n" above a bar where k of n seeds did); or
    (None, why not) where there is nothing to draw: a plot without bars says less than the line does."""
    targets = budget_cells(budget)
    data = {}  # (row, task) -> (mean steps over the seeds that reached the target, reached, runs)
    for row in matrix.rows:
        for task in matrix.tasks:
            if task not in targets:
                continue
            steps = [steps_to_reach(Path(r["run_dir"]) / "metrics.jsonl", targets[task].target_accuracy)
                     for r in records if r["row_slug"] == row.slug and r["task"] == task]
            reached = [s for s in steps if s is not None]
            if steps:
                data[(row.name, task)] = (statistics.mean(reached) if reached else math.nan, len(reached), len(steps))
    if not data:
        return None, (f"no run of a task budget {budget} sets a target for" if targets
                      else "no budget, so no target accuracy")
    if not any(reached for _, reached, _ in data.values()):
        tasks = [t for t in matrix.tasks if any(k[1] == t for k in data)]
        return None, ("no run reached its target accuracy ("
                      + ", ".join(f"{t} {100 * targets[t].target_accuracy:g}%" for t in tasks) + f", budget {budget})")
    plt = _pyplot()
    reached_by = lambda row, task: data.get((row.name, task), (0, 0, 0))[1]  # noqa: E731
    tasks = [t for t in matrix.tasks if any(reached_by(row, t) for row in matrix.rows)]
    never = [t for t in matrix.tasks if t not in tasks and any(k[1] == t for k in data)]
    rows = [row for row in matrix.rows if any(reached_by(row, t) for t in tasks)]
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(max(5, 2 * len(tasks)), 4))
    for i, row in enumerate(rows):
        cells = [(j + i * width, data[(row.name, t)]) for j, t in enumerate(tasks) if reached_by(row, t)]
        bars = ax.bar([x for x, _ in cells], [c[0] for _, c in cells], width=width, label=row.name)
        for bar, (_, (_, reached, runs)) in zip(bars, cells):
            if reached < runs:
                ax.annotate(f"{reached}/{runs}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7)
    ax.set_xticks([j + width * (len(rows) - 1) / 2 for j in range(len(tasks))])
    ax.set_xticklabels([f"{t}\n(target {100 * targets[t].target_accuracy:g}%)" for t in tasks], fontsize=8)
    ax.set_xlim(-0.5, len(tasks) - 0.5 + width * (len(rows) - 1))
    heights = [v[0] for v in data.values() if v[1]]
    ax.set_yscale("log")
    ax.set_ylim(min(heights) / 2, max(heights) * 2)
    ax.set(ylabel="gradient steps to target (val)", title=f"{matrix.name}: steps to converge")
    ax.legend(fontsize=8)
    notes = []
    if any(reached < runs for _, reached, runs in data.values()):
        notes.append("no bar: no seed of that row reached the target; k/n: k of n seeds did")
    silent = [row.name for row in matrix.rows if row not in rows and any(k[0] == row.name for k in data)]
    if silent:
        notes.append("no run of " + ", ".join(silent) + " reached a target")
    if never:
        notes.append("no run reached its target on " + ", ".join(
            f"{t} ({100 * targets[t].target_accuracy:g}%)" for t in never))
    ax.set_xlabel("\n".join(notes), fontsize=7)
    fig.tight_layout()
    return fig, ""


def plot_steps_to_converge(matrix, records: list[dict], out: Path, budget: str | None) -> Path | None:
    """steps_to_converge.png; None (a stale file removed, the reason printed) where nothing to draw."""
    fig, why = steps_to_converge_figure(matrix, records, budget)
    path = out / "steps_to_converge.png"
    if fig is None:
        path.unlink(missing_ok=True)
        print(f"{path.name}: not drawn: {why}", file=sys.stderr)
        return None
    return _save(fig, path)


