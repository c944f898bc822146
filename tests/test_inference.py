"""Using what was trained: `fpt evaluate`, `fpt predict` and `fpt.load_run` on tiny runs of task files (CSV,
image folder, npz), every bad input one line and exit 2; and `--tensorboard`'s event files."""
from __future__ import annotations

import csv
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import fpt
from fpt.cli import main


def _tiny(tiny_backbones) -> list[str]:
    return ["--backbone", tiny_backbones["gpt2"], "--batch-size", "8", "--quiet", "--device", "cpu"]


def _rows(n: int, *, label: bool = True, start: int = 0) -> str:
    """A CSV of n sequences over a, b, c; the label (0..2) is the number of `ab` pairs less one."""
    lines = [f"{'ab' * (i % 3 + 1)}{'c' * (i % 2)}" + (f",{i % 3}" if label else "") for i in range(start, start + n)]
    return "seq" + (",label" if label else "") + "\n" + "".join(line + "\n" for line in lines)


def _train(tmp: Path, task_yaml: str, tiny_backbones, steps: int = 4, *extra: str) -> Path:
    (tmp / "task.yaml").write_text(task_yaml)
    run = tmp / "run"
    assert main(["train", "--task", str(tmp / "task.yaml"), *_tiny(tiny_backbones), "--steps", str(steps),
                 "--eval-every", "2", "--run-dir", str(run), *extra]) == 0
    return run


@pytest.fixture(scope="module")
def csv_run(tiny_backbones, tmp_path_factory) -> Path:
    """A finished 4-step run of a CSV task file (40 rows, 3 classes, max_len 32)."""
    tmp = tmp_path_factory.mktemp("csv")
    (tmp / "train.csv").write_text(_rows(40))
    return _train(tmp, "format: csv\npath: train.csv\nmax_len: 32\n", tiny_backbones)


def _evaluate(capsys, *argv: str) -> dict:
    assert main(["evaluate", "--device", "cpu", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_evaluate_reports_what_training_measured(csv_run, capsys):
    result = json.loads((csv_run / "result.json").read_text())
    test = _evaluate(capsys, "--run-dir", str(csv_run))
    # the model reported: the best validation step's weights, whose test accuracy result.json records
    assert (test["split"], test["examples"], test["step"], test["weights"]) == (
        "test", result["split_sizes"]["test"], result["best_step"], "best")
    assert test["accuracy"] == result["test_accuracy"] == result["test_accuracy_at_best_val"]
    assert test["loss"] == pytest.approx(result["test_loss"], rel=1e-5)
    val = _evaluate(capsys, "--run-dir", str(csv_run), "--split", "val")
    assert val["accuracy"] == pytest.approx(result["best_val_accuracy"])
    last = _evaluate(capsys, "--run-dir", str(csv_run), "--split", "val", "--checkpoint", "last")
    assert (last["step"], last["weights"]) == (result["steps"], "last")
    assert last["accuracy"] == pytest.approx(result["val_accuracy"])  # the last evaluation's
    everything = _evaluate(capsys, "--run-dir", str(csv_run), "--split", "all")
    assert everything["examples"] == 40
    assert fpt.load_run(csv_run, device="cpu").evaluate("test")["loss"] == pytest.approx(test["loss"], rel=1e-6)


def test_evaluate_another_file_with_the_runs_vocabulary(csv_run, tmp_path, capsys):
    # unseen tokens (z) are the run's unknown id; a sequence longer than any the run trained on is cut to it
    (tmp_path / "other.csv").write_text(_rows(12, start=5) + "zzab,1\n" + "ab" * 10 + ",2\n")
    (tmp_path / "other.yaml").write_text("format: csv\npath: other.csv\n")
    assert main(["evaluate", "--run-dir", str(csv_run), "--task-file", str(tmp_path / "other.yaml")]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert (out["split"], out["examples"]) == ("all", 14) and 0 <= out["accuracy"] <= 1
    assert "1 sequence(s) cut to 7 tokens" in captured.err
    # the same numbers from the predictions of the same rows
    rows = fpt.load_run(csv_run, device="cpu").predict(tmp_path / "other.csv")
    assert sum(r["predicted"] == r["label"] for r in rows) / len(rows) == pytest.approx(out["accuracy"])


def test_predict_from_the_cli_and_from_python(csv_run, tmp_path, capsys):
    (tmp_path / "new.csv").write_text(_rows(9, label=False))
    run = fpt.load_run(csv_run, device="cpu")
    assert not run.model.training and run.step == json.loads((csv_run / "result.json").read_text())["best_step"] and run.spec.num_classes == 3
    rows = run.predict(tmp_path / "new.csv")
    assert [r["example"] for r in rows] == list(range(9)) and "label" not in rows[0]
    assert all(abs(sum(r["probabilities"]) - 1) < 1e-5 for r in rows)
    # the model itself on the encoded inputs: the run's vocabulary, as training encoded its rows
    data, _ = run.encode(tmp_path / "new.csv")
    b = data.splits["input"]
    with torch.no_grad():
        probs = run.model(b.x.long(), b.lengths).softmax(-1)[:, 0]
    assert torch.allclose(probs, torch.tensor([r["probabilities"] for r in rows]), atol=1e-5)

    assert main(["predict", "--run-dir", str(csv_run), "--device", "cpu", str(tmp_path / "new.csv")]) == 0
    out = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert list(out[0]) == ["example", "predicted", "p_0", "p_1", "p_2"]
    assert [int(r["predicted"]) for r in out] == [r["predicted"] for r in rows]

    (tmp_path / "labelled.csv").write_text(_rows(9))
    assert main(["predict", "--run-dir", str(csv_run), str(tmp_path / "labelled.csv"),
                 "--out", str(tmp_path / "p.jsonl")]) == 0
    assert "accuracy" in capsys.readouterr().err
    records = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["label"] for r in records] == [i % 3 for i in range(9)]
    assert [r["predicted"] for r in records] == [r["predicted"] for r in rows]


def test_the_run_keeps_its_vocabulary(tiny_backbones, tmp_path, capsys):
    """task.json holds the vocabulary: predictions survive a training file that changed; a run without it is
    rebuilt from the file, and a vocabulary that no longer fits is one line."""
    (tmp_path / "train.csv").write_text(_rows(30))
    run = _train(tmp_path, "format: csv\npath: train.csv\n", tiny_backbones)
    assert json.loads((run / "task.json").read_text())["vocab"] == ["a", "b", "c"]
    (tmp_path / "new.csv").write_text(_rows(6, label=False))
    before = fpt.load_run(run, device="cpu").predict(tmp_path / "new.csv")
    (tmp_path / "train.csv").write_text(_rows(30).replace("c", "cx"))  # a larger vocabulary now
    assert fpt.load_run(run, device="cpu").predict(tmp_path / "new.csv") == before
    (run / "task.json").unlink()  # as a run from before task.json: rebuilt from the (changed) training file
    assert main(["predict", "--run-dir", str(run), str(tmp_path / "new.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "vocabulary" in err[0], err


# ---- bad input: one line, exit 2 ---------------------------------------------------------------------

def _file(tmp: Path, name: str, text: str) -> str:
    (tmp / name).write_text(text)
    return str(tmp / name)


def _other(tmp: Path, yaml: str, rows: str | None = None) -> str:
    """other.yaml (`yaml`) over other.csv (`rows`)."""
    _file(tmp, "other.csv", rows or _rows(6))
    return _file(tmp, "other.yaml", yaml)


def _no_checkpoint(tmp: Path) -> str:
    (tmp / "stopped").mkdir()
    (tmp / "stopped" / "metrics.jsonl").write_text("")
    return str(tmp / "stopped")


def _tampered(run: Path, tmp: Path) -> str:
    shutil.copytree(run, tmp / "copy")
    ckpt = torch.load(tmp / "copy" / "checkpoint.pt", weights_only=False)
    ckpt["weights_sha256"] = "0" * 64
    torch.save(ckpt, tmp / "copy" / "checkpoint.pt")
    return str(tmp / "copy")


BAD = {  # name: (argv from (run, tmp), what the one line says)
    "missing run dir": (lambda r, t: ["evaluate", "--run-dir", str(t / "nope")], "does not exist"),
    "no checkpoint": (lambda r, t: ["predict", "--run-dir", _no_checkpoint(t), str(t)],
                      "holds no checkpoint.pt (the run stopped before its first checkpoint)"),
    "missing input": (lambda r, t: ["predict", "--run-dir", str(r), str(t / "nope.csv")],
                      "input '" + "{t}/nope.csv' does not exist"),
    "a folder for a CSV": (lambda r, t: ["predict", "--run-dir", str(r), str(t)], "is not a CSV file"),
    "an npz for a CSV": (lambda r, t: ["predict", "--run-dir", str(r), str(t / "x.npz")], "is not a CSV file"),
    "task file of another format": (lambda r, t: ["evaluate", "--run-dir", str(r), "--task-file",
                                                  _other(t, "format: npz\npath: other.npz\n")],
                                    "has format npz; the run trained on format csv"),
    "missing task file": (lambda r, t: ["evaluate", "--run-dir", str(r), "--task-file", str(t / "nope.yaml")],
                          "not found"),
    "label beyond the run's classes": (lambda r, t: ["evaluate", "--run-dir", str(r), "--task-file",
                                                     _other(t, "format: csv\npath: other.csv\n", _rows(3) + "ab,7\n")],
                                       "line 5: label 7 out of range 0..2"),
    "predicting labels beyond the classes": (lambda r, t: ["predict", "--run-dir", str(r),
                                                           _file(t, "new.csv", "seq,label\nab,3\n")],
                                             "line 2: label 3 out of range 0..2"),
    "another class count": (lambda r, t: ["evaluate", "--run-dir", str(r), "--task-file",
                                          _other(t, "format: csv\npath: other.csv\nnum_classes: 5\n")],
                            "sets num_classes: 5; the run has 3 classes"),
    "other preprocessing": (lambda r, t: ["evaluate", "--run-dir", str(r), "--task-file",
                                          _other(t, "format: csv\npath: other.csv\nmax_len: 64\n")],
                            "sets max_len: 64, the run trained with 32"),
    "another frozen body": (lambda r, t: ["evaluate", "--run-dir", _tampered(r, t)], "differs from the one"),
    "bad batch size": (lambda r, t: ["evaluate", "--run-dir", str(r), "--batch-size", "0"],
                       "batch size must be positive"),
    "unknown split": (lambda r, t: ["evaluate", "--run-dir", str(r), "--split", "dev"], "unknown split 'dev'"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line(case, csv_run, tmp_path, capsys):
    argv, match = BAD[case]
    np.savez(tmp_path / "x.npz", x=np.zeros((2, 3)))
    assert main(argv(csv_run, tmp_path)) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and match.format(t=tmp_path) in err[0], err
    assert captured.out == ""


# ---- image folders and npz ---------------------------------------------------------------------------

def _images(folder: Path, n: int, seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def test_predict_an_image_folder(tiny_backbones, tmp_path, capsys):
    for k, cls in enumerate(("cat", "dog")):
        _images(tmp_path / "img" / cls, 6, k)
    run = _train(tmp_path, "format: image_folder\npath: img\nimage_size: 8\npatch_size: 4\n"
                 "val_fraction: 0.2\ntest_fraction: 0.2\n", tiny_backbones, 2)
    assert json.loads((run / "task.json").read_text())["classes"] == ["cat", "dog"]
    _images(tmp_path / "new", 2, 5)  # two loose images, and one in a class subfolder
    _images(tmp_path / "new" / "dog", 1, 6)
    assert main(["predict", "--run-dir", str(run), str(tmp_path / "new"), "--out", str(tmp_path / "p.csv")]) == 0
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert [(r["example"], r["label"]) for r in rows] == [("0.png", ""), ("1.png", ""), ("dog/0.png", "1")]
    assert all(r["predicted_class"] == ["cat", "dog"][int(r["predicted"])] for r in rows)
    capsys.readouterr()
    assert main(["evaluate", "--run-dir", str(run), "--split", "train"]) == 0  # raw training images, prepared
    assert json.loads(capsys.readouterr().out)["examples"] == 8
    _images(tmp_path / "new" / "cow", 1, 7)
    assert main(["predict", "--run-dir", str(run), str(tmp_path / "new")]) == 2
    assert "subfolder(s) cow are not among the classes cat, dog" in capsys.readouterr().err


def test_predict_an_npz(tiny_backbones, tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "a.npz", x_train=rng.normal(size=(20, 8)).astype(np.float32), y_train=np.arange(20) % 2)
    run = _train(tmp_path, "format: npz\npath: a.npz\npatch_size: 4\n", tiny_backbones, 2)
    np.savez(tmp_path / "new.npz", x=rng.normal(size=(5, 8)).astype(np.float32), y=np.arange(5) % 2)
    rows = fpt.load_run(run, device="cpu").predict(tmp_path / "new.npz")
    assert [r["label"] for r in rows] == [0, 1, 0, 1, 0] and len(rows[0]["probabilities"]) == 2
    np.savez(tmp_path / "wide.npz", x=rng.normal(size=(5, 12)).astype(np.float32))
    assert main(["predict", "--run-dir", str(run), str(tmp_path / "wide.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "expected (5, 2, 4) floats" in err[0], err


# ---- --tensorboard -----------------------------------------------------------------------------------

def test_tensorboard_writes_the_metrics(tiny_backbones, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    argv = ["train", *_tiny(tiny_backbones), "--steps", "4", "--eval-every", "2", "--run-dir", str(run)]
    assert main(argv + ["--tensorboard"]) == 0
    assert main(["train", "--run-dir", str(run), "--resume", "--steps", "6", "--tensorboard", "--quiet"]) == 0
    assert list(run.glob("events.out.tfevents.*"))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(run))
    events.Reload()
    from fpt.run.tblog import tag

    series = {tag(k) for k, v in records[0].items() if k != "step" and isinstance(v, (int, float))}
    assert {"train/loss", "train/accuracy", "train/lr", "val/accuracy", "val/loss", "time/elapsed_s"} <= series
    result = json.loads((run / "result.json").read_text())
    final = {f"hparams/{k}" for k in ("test_accuracy", "best_val_accuracy", "train_accuracy_at_best")
             if isinstance(result.get(k), (int, float))}
    assert "hparams/test_accuracy" in final and set(events.Tags()["scalars"]) == series | final
    assert events.PluginTagToContent("hparams")
    for name in ("train_loss", "val_accuracy", "lr", "elapsed_s"):
        logged = [(e.step, e.value) for e in events.Scalars(tag(name))]
        assert logged == [(r["step"], pytest.approx(r[name], rel=1e-6, abs=1e-6)) for r in records]


def test_tensorboard_missing_is_one_line(tiny_backbones, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `import` raises ImportError
    run = tmp_path / "run"
    assert main(["train", *_tiny(tiny_backbones), "--steps", "2", "--run-dir", str(run), "--tensorboard"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'fpt[tensorboard]'" in err[0], err
    assert not run.exists()  # nothing trained, nothing written
