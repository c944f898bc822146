"""A trained FPT as a shareable artefact (`fpt export`), labels by name, in-memory predictions, a portable run
directory (issue 43)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import fpt
from fpt.cli import main
from fpt.core.errors import FPTError


def _tiny(tiny_backbones) -> list[str]:
    return ["--backbone", tiny_backbones["bert"], "--batch-size", "8", "--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def named_run(tiny_backbones, tmp_path_factory) -> Path:
    """A CSV task whose labels are words: trained, with new inputs that carry an id column."""
    folder = tmp_path_factory.mktemp("named")
    rows = "".join(f"{'ab' * (i % 4 + 1)}{'c' * (i % 2)},{['no_gat', 'gat'][i % 2]}\n" for i in range(60))
    (folder / "d.csv").write_text("seq,label\n" + rows)
    (folder / "t.yaml").write_text("format: csv\npath: d.csv\n")
    (folder / "new.csv").write_text("id,seq\nx1,abab\nx2,abc\nx3,ab\n")
    cwd = os.getcwd()
    os.chdir(folder)  # the task file named relative to where training ran, as users do
    try:
        assert main(["train", *_tiny(tiny_backbones), "--task", "t.yaml", "--steps", "6",
                     "--eval-every", "2", "--run-dir", str(folder / "run")]) == 0
    finally:
        os.chdir(cwd)
    return folder / "run"


def test_text_labels_train_and_predictions_name_the_classes(named_run, capsys):
    encoding = json.loads((named_run / "task.json").read_text())
    assert encoding["classes"] == ["gat", "no_gat"]  # sorted, recorded
    capsys.readouterr()
    assert main(["predict", "--run-dir", str(named_run), str(named_run.parent / "new.csv")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "example,predicted,predicted_class,p_gat,p_no_gat"
    assert [line.split(",")[0] for line in lines[1:]] == ["x1", "x2", "x3"]  # the input's own ids


def test_an_unknown_label_name_is_one_line(named_run, tmp_path, capsys):
    (tmp_path / "o.csv").write_text("seq,label\nab,gat\nabc,maybe\n")
    (tmp_path / "o.yaml").write_text("format: csv\npath: o.csv\n")
    assert main(["evaluate", "--run-dir", str(named_run), "--task-file", str(tmp_path / "o.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'maybe' is not one of the classes gat, no_gat" in err, err


def test_predict_takes_strings_arrays_and_tensors(named_run, tiny_backbones, tmp_path):
    run = fpt.load_run(named_run, device="cpu")
    from_file = run.predict(named_run.parent / "new.csv")
    from_strings = run.predict(["abab", "abc", "ab"])
    assert [r["probabilities"] for r in from_strings] == [r["probabilities"] for r in from_file]
    assert len(repr(run).splitlines()) == 1 and "best weights of step" in repr(run)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "a.npz", x_train=rng.normal(size=(40, 8)).astype(np.float32),
             y_train=np.array(["cat", "dog"] * 20))
    (tmp_path / "n.yaml").write_text("format: npz\npath: a.npz\npatch_size: 4\n")
    assert main(["train", *_tiny(tiny_backbones), "--task", str(tmp_path / "n.yaml"), "--steps", "2",
                 "--eval-every", "2", "--run-dir", str(tmp_path / "nrun")]) == 0
    npz_run = fpt.load_run(tmp_path / "nrun", device="cpu")
    x = rng.normal(size=(3, 8)).astype(np.float32)
    a, t = npz_run.predict(x), npz_run.predict(torch.from_numpy(x))
    assert npz_run.classes == ["cat", "dog"] and a == t and {r["predicted_class"] for r in a} <= {"cat", "dog"}
    with pytest.raises(FPTError, match="a list of strings"):
        run.predict(x)


def test_export_writes_safetensors_config_and_card(named_run, tmp_path, capsys):
    out = tmp_path / "exported"
    assert main(["export", str(named_run), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    from safetensors.torch import load_file

    tensors = load_file(str(out / "model.safetensors"))  # tensors only: nothing to unpickle
    config = json.loads((out / "config.json").read_text())
    result = json.loads((named_run / "result.json").read_text())
    assert set(tensors) == set(config["weights"]["tensors"]) and config["weights"]["step"] == result["best_step"]
    assert config["task"]["class_names"] == ["gat", "no_gat"]
    assert config["backbone"]["weights_sha256"] == result["weights_sha256"]
    card = (out / "README.md").read_text()
    assert "test accuracy" in card and "## Limitations" in card and "fpt.load_run" in card
    # the exported folder predicts what the run predicts, and evaluates to the run's figure
    capsys.readouterr()
    new = str(named_run.parent / "new.csv")
    assert main(["predict", "--run-dir", str(named_run), new]) == 0
    from_run = capsys.readouterr().out
    assert main(["predict", "--run-dir", str(out), new]) == 0
    assert capsys.readouterr().out == from_run
    assert main(["export", str(named_run), "--out", str(out)]) == 2  # never over an export
    assert "not empty" in capsys.readouterr().err


def test_an_export_on_another_body_is_one_line(named_run, tmp_path, capsys):
    out = tmp_path / "exported"
    assert main(["export", str(named_run), "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    config["backbone"]["weights_sha256"] = "0" * 16
    (out / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["predict", "--run-dir", str(out), str(named_run.parent / "new.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "differs from the one" in err, err


def test_a_run_directory_evaluates_after_it_moves(named_run, tmp_path, monkeypatch, capsys):
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(named_run, moved)
    monkeypatch.chdir(tmp_path)  # the task file's relative name no longer resolves from here
    assert json.loads((moved / "result.json").read_text())["config"]["task"] == "t.yaml"
    assert main(["evaluate", "--run-dir", str(moved)]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == \
        json.loads((named_run / "result.json").read_text())["test_accuracy"]


def test_load_run_is_in_the_front_door():
    assert {"load_run", "export_run", "train"} <= set(dir(fpt))
