"""`fpt report` on run files written by hand: the train / test / gap table and columns, which test accuracy a
cell shows (old and new runs), tasks a budget leaves out, and each figure kind drawn with data, never empty."""
import csv
import json

import pytest

from fpt.paper.reproduce import load_matrix

MATRIX = """
name: fake
tasks: [bit-memory, mnist, listops]
rows:
  - {name: Alpha, config: {init: pretrained}}
  - {name: Beta, config: {init: random}}
"""
# budget cpu-large: bit-memory (target 99%) and mnist (97%), not listops


def _m(step, train, val, test):
    return {"step": step, "train_loss": 1.0 - train, "train_accuracy": train, "val_accuracy": val,
            "test_accuracy": test, "elapsed_s": step / 10}


def _run(out, row, task, seed, metrics, **result):
    run = out / "runs" / row / task / f"lr0.001-seed{seed}"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (run / "result.json").write_text(json.dumps({"status": "finished", "steps": metrics[-1]["step"],
                                                 "wall_time_s": 60.0, **result}))


@pytest.fixture
def sweep(tmp_path):
    out = tmp_path / "fake-cpu-large"
    out.mkdir()
    (out / "matrix.yaml").write_text(MATRIX)
    (out / "sweep.json").write_text(json.dumps({"matrix": "fake", "budget": "cpu-large"}))
    # an older run: its test accuracy at the best validation step is test_accuracy_at_best_val (0.99), not
    # the last evaluation's test_accuracy (0.985); training accuracy at that step 0.95, the last 0.97
    _run(out, "alpha", "bit-memory", 0, [_m(200, .70, .80, .79), _m(400, .95, .995, .99), _m(600, .97, .99, .985)],
         test_accuracy=.985, test_accuracy_at_best_val=.99, best_step=400, best_val_accuracy=.995,
         train_accuracy=.97)
    # a newer run: test_accuracy is the best-validation weights' already
    _run(out, "alpha", "bit-memory", 1, [_m(200, .80, .90, .90), _m(400, .96, .98, .97), _m(600, .99, .992, .98)],
         test_accuracy=.98, best_step=600, best_val_accuracy=.992, train_accuracy=.99)
    _run(out, "beta", "bit-memory", 0, [_m(200, .60, .70, .70), _m(400, .70, .75, .75)],
         test_accuracy=.75, test_accuracy_at_best_val=.75, best_step=400, best_val_accuracy=.75, train_accuracy=.70)
    # one evaluation only; its best_step has no metrics record: result.json's train_accuracy stands in
    _run(out, "alpha", "mnist", 0, [_m(500, .90, .95, .94)],
         test_accuracy=.94, best_step=2000, best_val_accuracy=.95, train_accuracy=.91)
    return out


def test_train_test_gap_table_and_columns(sweep):
    from fpt.paper.report import CSV_FIELDS, report

    table = report(sweep)
    lines = table.splitlines()
    assert "| row | bit-memory | mnist |" in lines  # listops: no column of "not run" cells ...
    assert "Not in budget cpu-large (fpt/paper/budgets.py), so not run: listops." in lines  # ... but one note
    assert "listops |" not in table and "not run: budget" not in table
    # the cell is the best-validation weights' test accuracy: 0.99 (old run) and 0.98 (new run)
    assert "| Alpha | 98.5 ± 0.7 (n=2) | 94.0 (n=1) † |" in lines
    gap_table = lines[lines.index(next(l for l in lines if l.startswith("Train / test / gap"))):]
    # training accuracy at the best step: 0.95 and 0.99 (not the last records' 0.97, 0.99); mnist falls back
    assert "| Alpha | 97.0 / 98.5 / -1.5 | 91.0 / 94.0 / -3.0 |" in gap_table
    assert "| Beta | 70.0 / 75.0 / -5.0 | – |" in gap_table
    assert {"train_accuracy_at_best", "generalization_gap"} <= set(CSV_FIELDS)
    with open(sweep / "results.csv") as f:
        rows = {(r["row"], r["task"], r["seed"]): r for r in csv.DictReader(f)}
    old, new = rows[("Alpha", "bit-memory", "0")], rows[("Alpha", "bit-memory", "1")]
    assert (float(old["train_accuracy_at_best"]), float(old["generalization_gap"])) == (0.95, -0.04)
    assert (float(new["train_accuracy_at_best"]), float(new["generalization_gap"])) == (0.99, 0.01)
    assert float(rows[("Alpha", "mnist", "0")]["train_accuracy_at_best"]) == 0.91


def test_readme_block_lists_covered_tasks_and_one_note(sweep):
    from fpt.paper.report import readme_block

    block = readme_block(sweep).splitlines()
    assert [line.split(":")[0] for line in block if line.startswith("| ") and "`" in line] == \
        ["| bit-memory", "| mnist"]
    assert block[-2:] == ["", "Not in budget cpu-large (fpt/paper/budgets.py), so not run: listops."]


def test_a_named_test_split_is_said_in_the_table_and_the_readme(sweep):
    """A task whose test column is a named split (homology: TAPE's test_fold_holdout) says so in table.md's
    notes and in the README's row label."""
    from fpt.paper.report import readme_block, report

    for seed in (0, 1):
        run = sweep / "runs" / "alpha" / "bit-memory" / f"lr0.001-seed{seed}" / "result.json"
        result = json.loads(run.read_text())
        run.write_text(json.dumps({**result, "split_sizes": {"train": 90, "val": 7, "test_fold_holdout": 5, "test": 5}}))
    assert "- bit-memory: test is the test_fold_holdout split (5 examples)." in report(sweep).splitlines()
    assert any(line.startswith("| bit-memory (test: test_fold_holdout): `fpt reproduce")
               for line in readme_block(sweep).splitlines())


def _drawn(ax) -> bool:
    """The axes hold data artists."""
    return bool(ax.lines or ax.patches or ax.collections or ax.images)


def test_learning_curves_fit_their_data(sweep):
    from fpt.paper.figures import learning_curve_figures
    from fpt.paper.report import collect

    figures = learning_curve_figures(load_matrix(str(sweep / "matrix.yaml")), collect(sweep))
    assert set(figures) == {"bit-memory", "mnist"}  # listops has no evaluation: no figure
    curves = figures["bit-memory"].axes[0]
    assert _drawn(curves) and [l.get_label() for l in curves.lines] == ["Alpha", "Beta"]
    assert curves.get_xlim()[0] == 0 and 600 <= curves.get_xlim()[1] <= 650
    assert curves.get_ylim()[0] <= 70 and 98.5 <= curves.get_ylim()[1] <= 100.5
    single = figures["mnist"].axes[0]  # one evaluation at step 500: an axis from step 0 to it
    assert len(single.lines) == 1 and list(single.lines[0].get_xdata()) == [500]
    assert single.get_xlim()[0] == 0 and 500 <= single.get_xlim()[1] <= 550
    low, high = single.get_ylim()
    assert low < 95 < high and high - low >= 4  # its validation accuracy


def test_steps_to_converge_draws_only_bars_with_data(sweep):
    from fpt.paper.figures import steps_to_converge_figure
    from fpt.paper.report import collect

    fig, why = steps_to_converge_figure(load_matrix(str(sweep / "matrix.yaml")), collect(sweep), "cpu-large")
    assert fig is not None and why == ""
    ax = fig.axes[0]
    heights = [bar.get_height() for bar in ax.patches]
    assert heights == [500]  # Alpha on bit-memory: 400 and 600 steps; Beta and mnist reached nothing
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["Alpha"]  # no legend for absent bars
    assert ax.get_yscale() == "log" and ax.get_ylim()[0] < 500 < ax.get_ylim()[1]
    assert [t.get_text().split("\n")[0] for t in ax.get_xticklabels()] == ["bit-memory"]
    assert "no run of Beta reached a target" in ax.get_xlabel()
    assert "no run reached its target on mnist (97%)" in ax.get_xlabel()


def test_report_writes_non_empty_figures_and_no_empty_plot(sweep, capsys):
    import matplotlib.image

    from fpt.paper.report import report

    report(sweep)
    for name in ("curves_bit-memory.png", "curves_mnist.png", "steps_to_converge.png"):
        image = matplotlib.image.imread(sweep / name)
        assert image.shape[0] > 100 and image.std() > 0.05, name  # not a blank canvas
    assert not (sweep / "curves_listops.png").exists()

    # no run reached its target: no plot with empty axes, a stale one removed, and one line saying why
    for seed in (0, 1):
        (sweep / "runs" / "alpha" / "bit-memory" / f"lr0.001-seed{seed}" / "metrics.jsonl").write_text(
            json.dumps(_m(200, .5, .5, .5)) + "\n")
    capsys.readouterr()
    report(sweep)
    assert not (sweep / "steps_to_converge.png").exists()
    assert ("steps_to_converge.png: not drawn: no run reached its target accuracy (bit-memory 99%, mnist 97%, "
            "budget cpu-large)") in capsys.readouterr().err
