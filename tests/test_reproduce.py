"""`fpt reproduce` / `fpt report` on a tiny matrix: files, resumability, divergence, tables, plots."""
import csv
import json

import pytest

from fpt.cli import main
from fpt.paper.reproduce import load_matrix, plan


@pytest.fixture
def tiny_matrix(tmp_path, tiny_backbones):
    path = tmp_path / "tiny.yaml"
    path.write_text(f"""
name: tiny
paper_table: T2
tasks: [bit-xor, mnist]
defaults: {{backbone: {tiny_backbones['gpt2']}}}
rows:
  - {{name: Pretrained, paper_row: FPT (GPT-2), config: {{init: pretrained}}}}
  - {{name: Random, paper_row: Random init (frozen), config: {{init: random}}}}
  - {{name: Exploding, config: {{train: all, lr: 1.0e+30, grad_clip: 0.0}}}}
""")
    return path


def test_plan_covers_budget(tiny_matrix, tmp_path):
    runs = plan(load_matrix(str(tiny_matrix)), budget="smoke", seeds=2, out=tmp_path / "o")
    assert len(runs) == 3 * 2 * 2
    skipped = [r for r in runs if r.config is None]
    assert {r.task for r in skipped} == {"mnist"}  # smoke covers the bit tasks only


def test_plan_keeps_selected_rows_and_tasks(tiny_matrix, tmp_path):
    from fpt.core.errors import FPTError

    runs = plan(load_matrix(str(tiny_matrix)), budget="cpu", seeds=1, out=tmp_path / "o",
                rows=["Random"], tasks=["bit-xor"])
    kept = [(r.row.name, r.task) for r in runs if r.config is not None]
    assert kept == [("Random", "bit-xor")]
    assert {r.skip_reason for r in runs if r.config is None} == {"left out by --rows / --tasks"}
    with pytest.raises(FPTError, match="no row 'Typo'"):
        plan(load_matrix(str(tiny_matrix)), budget="cpu", seeds=1, out=tmp_path / "o", rows=["Typo"])


def test_budget_recipe_reaches_configs_and_rows_win(tiny_matrix, tmp_path):
    from fpt.paper.budgets import get_budget

    mnist = get_budget("cpu")["mnist"]
    runs = plan(load_matrix(str(tiny_matrix)), budget="cpu", seeds=1, out=tmp_path / "o", tasks=["mnist"])
    cfgs = {r.row.name: r.config for r in runs if r.config is not None}
    pretrained = cfgs["Pretrained"]
    assert (pretrained.steps, pretrained.lr, pretrained.lr_schedule, pretrained.warmup_steps) == \
        (mnist.steps, mnist.lr, mnist.lr_schedule, mnist.warmup_steps)
    assert pretrained.run_dir.endswith(f"lr{mnist.lr:g}-seed0")
    assert cfgs["Exploding"].lr == 1.0e+30  # the row's own rate
    swept = plan(load_matrix(str(tiny_matrix)), budget="cpu", seeds=1, out=tmp_path / "o", tasks=["mnist"],
                 lrs=[1e-4])
    assert {r.config.lr for r in swept if r.config is not None} == {1e-4}  # --lr-sweep wins over both


def test_bad_row_fails_in_one_line(tiny_matrix, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(tiny_matrix.read_text() + "  - {name: Typo, config: {wings: 2}}\n")
    assert main(["reproduce", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "row 'Typo'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_dry_run_prices_only_what_a_resumed_sweep_would_train(tiny_matrix, tmp_path, capsys):
    out = tmp_path / "o"
    runs = [r for r in plan(load_matrix(str(tiny_matrix)), budget="smoke", seeds=1, out=out) if r.config]
    finished, partial = runs[0], runs[1]
    finished.run_dir.mkdir(parents=True)
    (finished.run_dir / "result.json").write_text(json.dumps({"test_accuracy": 0.75}))
    partial.run_dir.mkdir(parents=True)
    (partial.run_dir / "checkpoint.pt").write_bytes(b"")  # partial: only its state is read here
    (partial.run_dir / "metrics.jsonl").write_text(json.dumps({"step": 40}) + "\n" + '{"step": 6')  # a cut line
    assert main(["reproduce", str(tiny_matrix), "--budget", "smoke", "--dry-run", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"done {finished.row.name} / {finished.task} / seed 0 / lr {finished.lr:g}: test accuracy 0.7500" in printed
    priced = [line for line in printed.splitlines() if "ms =" in line]
    assert len(priced) == len(runs) - 1  # the finished run is not priced again
    left = partial.config.steps - 40
    assert any(line.split()[0] == partial.row.name and f" {left} steps" in line for line in priced)
    assert f"for the {len(runs) - 1} runs not finished" in printed


def test_reproduce_end_to_end_and_rerun(tiny_matrix, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["reproduce", str(tiny_matrix), "--budget", "smoke", "--seeds", "2", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    for name in ("results.csv", "table.md", "curves_bit-xor.png", "attention_bit_xor.png"):
        assert (out / name).exists(), name
    # drawn where a run reached the budget's target; otherwise no empty plot, and one line says why
    assert (out / "steps_to_converge.png").exists() or \
        "steps_to_converge.png: not drawn: no run reached its target" in capsys.readouterr().err
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 3 * 2  # rows x seeds on bit-xor (mnist is not in the smoke budget)
    assert {r["status"] for r in rows if r["row"] == "Exploding"} == {"diverged"}
    table = (out / "table.md").read_text()
    assert "± " in table and "(n=2)" in table and "[paper: 100]" in table and "diverged" in table
    # every cell is a number or says why not; a task the budget covers for no row is one note, not a
    # column of "not run" cells; the majority baseline beside; train / test / gap; what the bodies were
    assert "Not in budget smoke (fpt/paper/budgets.py), so not run: mnist." in table and "mnist |" not in table
    majority = next(line for line in table.splitlines() if line.startswith("| majority class"))
    assert majority.split("|")[2].strip() not in ("", "–") and len(majority.split("|")) == 4
    assert "Train / test / gap" in table and (" / +" in table or " / -" in table)
    assert "- Pretrained: gpt2 (pre-LN), 2 layers x 64, 2 heads" in table and "Measured on:" in table

    # rerun: finished runs are skipped, a half-done one resumes from its checkpoint
    done = out / "runs" / "pretrained" / "bit-xor" / "lr0.001-seed0"
    before = (done / "result.json").read_text()
    partial = out / "runs" / "random" / "bit-xor" / "lr0.001-seed1"
    expected = json.loads((partial / "result.json").read_text())
    (partial / "result.json").unlink()
    capsys.readouterr()
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("done already, skipped") == 3 * 2 - 1
    assert "resuming" in err
    assert (done / "result.json").read_text() == before
    resumed = json.loads((partial / "result.json").read_text())
    assert resumed["test_accuracy"] == expected["test_accuracy"]

    # the same table after the resume, but for the host note: the resumed run measured this CPU's rates
    rerun_table = (out / "table.md").read_text()
    assert [line for line in rerun_table.splitlines() if not line.startswith("- Measured on")] \
        == [line for line in table.splitlines() if not line.startswith("- Measured on")]

    # report alone rebuilds the same table
    (out / "table.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "table.md").read_text() == rerun_table


@pytest.mark.parametrize("others", [0, 2])
def test_dry_run_estimates_and_says_when_another_job_slowed_its_timing(tiny_matrix, tmp_path, capsys,
                                                                       monkeypatch, others):
    import fpt.models.precision

    monkeypatch.setattr(fpt.models.precision, "other_runnable_threads", lambda: others)
    assert main(["reproduce", str(tiny_matrix), "--budget", "smoke", "--dry-run", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "estimated total" in out and "ms =" in out
    assert ("2 thread(s) of other processes were running" in out) == (others == 2)
    assert not (tmp_path / "o").exists()


def test_shipped_matrices_parse():
    for name in ("table1", "pretraining", "params", "frozen-vs-unfrozen", "model-size", "layernorm", "compute"):
        m = load_matrix(name)
        assert m.rows and m.tasks


def test_campaign_queue_lines_are_valid_reproduce_commands(tmp_path):
    """tools/campaign-queue.txt runs unattended for hours: a renamed row, task or budget must fail here."""
    import shlex
    from pathlib import Path

    from fpt.cli import build_parser
    from fpt.commands.reproduce import _names

    root = Path(__file__).resolve().parents[1]
    queue = root / "tools" / "campaign-queue.txt"
    lines = [line.split("#")[0].strip() for line in queue.read_text().splitlines()]  # as cpu_campaign.sh cuts them
    parser = build_parser()
    for line in filter(None, lines):
        if line.startswith("tools/"):  # a measuring script: it must be there
            assert (root / shlex.split(line)[0]).is_file(), f"no script: {line}"
            continue
        args = parser.parse_args(["reproduce", *shlex.split(line)])
        runs = plan(load_matrix(args.matrix), budget=args.budget, seeds=args.seeds, out=tmp_path,
                    backbone=args.backbone, rows=_names(args.rows), tasks=_names(args.tasks))
        assert any(r.config is not None for r in runs), f"plans no run: {line}"


def test_lra_wall_plans_table1s_cifar10_lra_fpt_cell(tmp_path):
    """tools/lra_wall.py (a queue line) times Table 1's FPT cell on CIFAR-10 LRA at the cpu budget."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / "lra_wall.py"
    spec = importlib.util.spec_from_file_location("lra_wall", path)
    lra_wall = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lra_wall)
    run, cfg = lra_wall.planned_run(tmp_path, None)
    assert (run.task, run.row.name, cfg.task, cfg.init) == ("cifar10-lra", "FPT", "cifar10-lra", "pretrained")
    assert cfg.steps == run.config.steps and cfg.dropout > 0  # the shape long attention was built for
    _, quick = lra_wall.planned_run(tmp_path, 3)
    assert (quick.steps, quick.eval_every, quick.task_options["test_size"]) == (3, 3, 16)


def test_report_updates_the_readme_block_and_refuses_a_readme_without_one(tiny_matrix, tmp_path, capsys):
    from fpt.paper.report import README_END, README_START, readme_block

    out = tmp_path / "out"
    assert main(["reproduce", str(tiny_matrix), "--budget", "smoke", "--out", str(out), "--quiet",
                 "--rows", "Random"]) == 0
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{README_START.format(out=out)}\nstale\n{README_END.format(out=out)}\n\nafter\n")
    assert main(["report", str(out), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "stale" not in text and readme_block(out) in text and text.endswith("\n\nafter\n")
    # rows left out this time are queued: the same sweep without --rows runs them
    assert "| bit-xor: `fpt reproduce tiny --budget smoke --tasks bit-xor` | not run yet [100] | " in text
    assert "| mnist: " not in text and "\n\nNot in budget smoke (fpt/paper/budgets.py), so not run: mnist.\n" in text
    other = tmp_path / "OTHER.md"
    other.write_text("no block here\n")
    capsys.readouterr()
    assert main(["report", str(out), "--readme", str(other)]) == 2
    assert "has no generated block" in capsys.readouterr().err and other.read_text() == "no block here\n"


def test_readme_tables_are_the_committed_results():
    """Every results table in README.md is what `fpt report` makes from the files under results/: a
    number in it is never typed by hand (`fpt report DIR --readme README.md` rewrites it)."""
    import re
    from pathlib import Path

    from fpt.paper.report import README_END, readme_block

    root = Path(__file__).resolve().parent.parent
    text = (root / "README.md").read_text()
    blocks = re.findall(r"<!-- fpt report (\S+): generated, do not edit -->\n(.*?)\n<!-- end of fpt report", text, re.S)
    assert blocks, "README.md has no generated results table"
    for out, block in blocks:
        assert README_END.format(out=out) in text
        assert (root / out / "matrix.yaml").exists(), f"README quotes {out}, which holds no committed sweep"
        assert block == readme_block(root / out), f"README's table for {out} differs from `fpt report {out}`"


@pytest.mark.parametrize("budget", ["smoke", "cpu", "gpu", "paper"])
def test_table1_plans_every_row_in_every_budget(budget, tmp_path):
    """Each shipped budget plans every table1 row (a row's own warm-up is capped in a shorter budget),
    and every cpu/gpu/paper task is covered: 28 cells."""
    runs = plan(load_matrix("table1"), budget=budget, seeds=1, out=tmp_path)
    planned = [r for r in runs if r.config is not None]
    rows = {"FPT", "Random init", "Full transformer", "Full LSTM"}
    assert {r.row.name for r in planned} - {"Full transformer (3 layers)"} == rows
    assert all(r.config.warmup_steps < r.config.steps for r in planned)
    # the paper's 3-layer transformer is a CIFAR-10 row: its other cells are not planned, and say why
    three = [r for r in runs if r.row.name == "Full transformer (3 layers)"]
    assert {r.task for r in three if r.config is not None} <= {"cifar10"}
    assert all(("covers only cifar10" in r.skip_reason or f"{budget!r} does not cover" in r.skip_reason)
               for r in three if r.task != "cifar10")
    if budget != "smoke":
        assert len(planned) == 29 and all(r.config.precision == "auto" for r in planned)


def test_cpu_large_budget_is_cpus_recipes_with_fewer_steps(tmp_path):
    """The 12 x 768 budget plans both compared rows on its four tasks with cpu's recipe (but for the peak
    rates it names), never more steps, the same steps for every row of a task; tasks it leaves out are
    listed as not covered."""
    from fpt.paper.budgets import get_budget

    cpu, large = get_budget("cpu"), get_budget("cpu-large")
    assert set(large) == {"bit-xor", "bit-memory", "mnist", "cifar10"}
    for task, cell in large.items():
        assert cell.steps <= cpu[task].steps and cell.warmup_steps < cell.steps
        assert (cell.lr, cell.lr_schedule, cell.dropout, cell.batch_size) == \
            ({"cifar10": 1e-3}.get(task, cpu[task].lr), cpu[task].lr_schedule, cpu[task].dropout, cpu[task].batch_size)
    runs = plan(load_matrix("pretraining"), budget="cpu-large", seeds=1, out=tmp_path,
                rows=["Pretrained (language)", "Random init"])
    planned = [r for r in runs if r.config is not None]
    assert len(planned) == 2 * 4
    assert {(r.task, r.config.steps) for r in planned} == {(t, c.steps) for t, c in large.items()}
    assert {r.task for r in runs if r.config is None and "does not cover" in r.skip_reason} >= {"listops", "homology"}


def test_report_works_on_committed_runs_moved_and_without_checkpoints(tiny_matrix, tmp_path, capsys):
    """What a fresh clone has: the run files without checkpoints, in another folder than they were trained in."""
    import shutil

    out = tmp_path / "out"
    assert main(["reproduce", str(tiny_matrix), "--budget", "smoke", "--out", str(out), "--quiet",
                 "--rows", "Pretrained"]) == 0
    table = (out / "table.md").read_text()
    moved = tmp_path / "clone" / "results"
    shutil.copytree(out, moved)
    for checkpoint in moved.glob("runs/*/*/*/checkpoint.pt"):
        checkpoint.unlink()
    capsys.readouterr()
    assert main(["report", str(moved)]) == 0
    assert (moved / "table.md").read_text() == table
    assert "has no checkpoint.pt on this machine" in capsys.readouterr().err  # the attention figure, left out
    with open(moved / "results.csv") as f:
        assert all(r["run_dir"].startswith(str(moved)) for r in csv.DictReader(f))


def test_host_note_names_each_hosts_measured_bf16_rate(tiny_matrix, tmp_path):
    """Two hosts of one CPU name can differ 2x in bf16 rate, so wall times beside each other need it; a
    rate at another width is not the same figure, and a probe beside another job measured the load."""
    from fpt.paper.report import _run_notes, collect

    amd, intel = {"cpu": "AMD EPYC", "native_bf16": True}, {"cpu": "Intel Xeon", "native_bf16": False}
    runs = [("pretrained/bit-xor/lr0.001-seed0", amd, "bf16", {"bf16_gflops": 898.1, "width": 384}),
            ("pretrained/bit-xor/lr0.001-seed1", amd, "bf16", {"bf16_gflops": 417.1, "width": 384}),
            ("pretrained/bit-xor/lr0.001-seed2", amd, "bf16", {"bf16_gflops": 429.0, "width": 768}),
            ("pretrained/bit-xor/lr0.001-seed3", amd, "bf16", {"bf16_gflops": 127.3, "width": 384, "contended": True}),
            ("random/bit-xor/lr0.001-seed0", intel, "fp32", None)]
    for run, host, precision, auto in runs:
        (tmp_path / "runs" / run).mkdir(parents=True)
        (tmp_path / "runs" / run / "result.json").write_text(json.dumps(
            {"host": host, "precision": precision, "precision_auto": auto, "status": "finished"}))
    note = next(n for n in _run_notes(load_matrix(tiny_matrix), collect(tmp_path)) if n.startswith("- Measured on:"))
    assert note == ("- Measured on: AMD EPYC (native bf16; bf16 matmul 417-898 GFLOP/s at width 384, 429 GFLOP/s at"
                    " width 768); Intel Xeon (no native bf16); precision bf16, fp32. Wall times move with the host's rate.")


def test_rate_is_chosen_on_the_seeds_every_rate_has():
    """Seeds run only at the chosen rate (--seeds-at-chosen-rate) must not re-choose it: 3e-4 was chosen
    on seed 0; its seeds 1-2 validate lower than 1e-3's seed 0, and the choice stays."""
    from fpt.paper.reproduce import select_lr

    def rec(lr, seed, val):
        return {"row_slug": "full", "task": "cifar10", "lr": lr, "seed": seed, "best_val_accuracy": val}

    replicated = [rec(3e-4, 0, 0.53), rec(3e-4, 1, 0.45), rec(3e-4, 2, 0.46), rec(1e-3, 0, 0.50)]
    assert select_lr(replicated) == {("full", "cifar10"): 3e-4}  # the mean over all seeds would pick 1e-3
    both = [rec(3e-4, 0, 0.53), rec(3e-4, 1, 0.45), rec(1e-3, 0, 0.50), rec(1e-3, 1, 0.50)]
    assert select_lr(both) == {("full", "cifar10"): 1e-3}  # every rate has seeds 0-1: their means decide


def test_seeds_at_chosen_rate_replicate_only_seed_zeros_choice(tiny_matrix, tmp_path, capsys):
    from fpt.paper.reproduce import at_chosen_rate

    out = tmp_path / "o"
    runs = [r for r in plan(load_matrix(str(tiny_matrix)), budget="smoke", seeds=2, out=out, lrs=[1e-3, 1e-2],
                            rows=["Random"], tasks=["bit-xor"]) if r.config is not None]
    later = [r for r in at_chosen_rate(runs) if r.seed == 1]
    assert len(later) == 2 and all(r.config is None and "waits for seed 0" in r.skip_reason for r in later)
    for r, val in zip([r for r in runs if r.seed == 0 and r.config is not None], (0.6, 0.9)):
        r.run_dir.mkdir(parents=True)
        (r.run_dir / "result.json").write_text(json.dumps({"best_val_accuracy": val}))
    kept = {r.lr: r for r in at_chosen_rate(runs) if r.seed == 1}
    assert kept[1e-2].config is not None and kept[1e-3].config is None
    assert kept[1e-3].skip_reason == "seed 0 chose lr 0.01 on validation"
    # the command: seed 0 at both rates, then seed 1 at the one seed 0 chose; nothing else is trained
    assert main(["reproduce", str(tiny_matrix), "--budget", "smoke", "--out", str(tmp_path / "e2e"), "--quiet",
                 "--rows", "Random", "--tasks", "bit-xor", "--lr-sweep", "0.001,0.01", "--seeds", "2",
                 "--seeds-at-chosen-rate"]) == 0
    done = sorted(p.parent.name for p in (tmp_path / "e2e" / "runs").rglob("result.json"))
    chosen = next(n for n in done if n.endswith("seed1")).split("-")[0]
    assert len(done) == 3 and {f"{chosen}-seed0", f"{chosen}-seed1"} <= set(done)
    sweep = json.loads((tmp_path / "e2e" / "sweep.json").read_text())
    assert sweep["seeds_at_chosen_rate"] is True
    assert main(["reproduce", str(tiny_matrix), "--budget", "smoke", "--seeds", "2", "--seeds-at-chosen-rate"]) == 2
    assert "needs --lr-sweep with two rates or more" in capsys.readouterr().err


def test_reuse_copies_finished_runs_of_the_same_config_and_the_report_says_so(tiny_matrix, tmp_path, capsys):
    """A matrix whose row repeats another sweep's (the same config under another name) copies that run's
    record instead of training it; a run whose config differs (another rate) is trained."""
    first = tmp_path / "first"
    assert main(["reproduce", str(tiny_matrix), "--budget", "smoke", "--out", str(first), "--quiet",
                 "--rows", "Random", "--tasks", "bit-xor"]) == 0
    source = next((first / "runs").rglob("result.json")).parent
    again = tmp_path / "again.yaml"
    again.write_text(tiny_matrix.read_text().replace("name: tiny", "name: again").replace(
        "{name: Random, paper_row: Random init (frozen), config: {init: random}}",
        "{name: Frozen random, config: {init: random}}\n  - {name: Faster random, config: {init: random, lr: 0.01}}"))
    second = tmp_path / "second"
    capsys.readouterr()
    args = ["reproduce", str(again), "--budget", "smoke", "--out", str(second), "--quiet",
            "--rows", "Frozen random,Faster random", "--tasks", "bit-xor", "--reuse", str(first)]
    assert main(args + ["--dry-run"]) == 0
    assert f"copy Frozen random / bit-xor / seed 0 / lr 0.001 from {source} (--reuse)" in capsys.readouterr().out
    assert main(args) == 0
    assert f"copied Frozen random / bit-xor / seed 0 / lr 0.001 from {source}: the same config" in capsys.readouterr().out
    copied = second / "runs" / "frozen-random" / "bit-xor" / source.name
    result = json.loads((copied / "result.json").read_text())
    assert result["copied_from"] == str(source)
    assert result["test_accuracy"] == json.loads((source / "result.json").read_text())["test_accuracy"]
    assert not (copied / "checkpoint.pt").exists()  # a record, never weights
    trained = json.loads(next((second / "runs" / "faster-random").rglob("result.json")).read_text())
    assert "copied_from" not in trained and trained["config"]["lr"] == 0.01
    table = (second / "table.md").read_text()
    assert ("Copied, not trained here (`fpt reproduce --reuse`; result.json: copied_from): 1 run of Frozen random, "
            f"from finished runs with the same config in {first}.") in table
    assert main(["reproduce", str(again), "--budget", "smoke", "--out", str(tmp_path / "x"), "--reuse",
                 str(tmp_path / "nowhere")]) == 2
    assert "no runs/ folder there" in capsys.readouterr().err and not (tmp_path / "x").exists()
