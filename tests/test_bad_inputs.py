"""Files someone hands you, and the faults a probe of a fresh clone found (issue 38): table-driven, so the next
change cannot reopen them (docs/testing.md, "Files you are handed").

1. A planted pickle payload (`__reduce__` -> os.system) runs nowhere: resume, evaluate, predict, load_run,
   report's attention figure, CIFAR-10 batches, backbone folders. Each is one line, exit 2, and the payload's
   marker file is never written.
2. The model you get is the model reported: evaluate prints result.json's test accuracy.
3. Records say what ran; resuming on other data is refused.
4. Faults that once ended in a traceback are one line.
"""
from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import fpt
from fpt.cli import main
from fpt.core.errors import FPTError

MARKER = "PAYLOAD_RAN"


class Payload:
    """Unpickling this runs a shell command that writes the marker file: the attack the loaders must refuse."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _tiny(tiny_backbones) -> list[str]:
    return ["--backbone", tiny_backbones["bert"], "--batch-size", "4", "--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def finished_run(tiny_backbones, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", *_tiny(tiny_backbones), "--lr", "0.01", "--steps", "6", "--eval-every", "2",
                 "--run-dir", str(run)]) == 0
    return run


@pytest.fixture(scope="module")
def csv_run(tiny_backbones, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("csvrun")
    (folder / "d.csv").write_text("seq,label\n" + "".join(f"{'ab' * (i % 4 + 1)},{i % 2}\n" for i in range(40)))
    (folder / "t.yaml").write_text("format: csv\npath: d.csv\n")
    run = folder / "run"
    assert main(["train", *_tiny(tiny_backbones), "--task", str(folder / "t.yaml"), "--steps", "4",
                 "--eval-every", "2", "--run-dir", str(run)]) == 0
    return run


def _copy(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out


def _one_line(capsys, code: int, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("fpt: error:"), err
    for needle in needles:
        assert needle in err, err
    return err


# ---- 1. no code runs on load ------------------------------------------------------------------------

PLANTS = {  # how a payload is planted in checkpoint.pt
    "torch-zip": lambda path, marker: torch.save({"config": {}, "trainable": Payload(marker)}, path),
    "plain-pickle": lambda path, marker: path.write_bytes(pickle.dumps(Payload(marker), protocol=4)),
    "plain-pickle-v2": lambda path, marker: path.write_bytes(pickle.dumps({"x": Payload(marker)}, protocol=2)),
}

READERS = {  # every path that reads a run's checkpoint, as the CLI runs it
    "resume": lambda run: ["train", "--run-dir", str(run), "--resume", "--quiet"],
    "evaluate": lambda run: ["evaluate", "--run-dir", str(run), "--device", "cpu"],
    "evaluate-last": lambda run: ["evaluate", "--run-dir", str(run), "--device", "cpu", "--checkpoint", "last"],
}


@pytest.mark.parametrize("plant", sorted(PLANTS))
@pytest.mark.parametrize("reader", sorted(READERS))
def test_a_planted_checkpoint_runs_nowhere(finished_run, tmp_path, capsys, plant, reader):
    run = _copy(finished_run, tmp_path)
    marker = tmp_path / MARKER
    PLANTS[plant](run / "checkpoint.pt", marker)
    code = main(READERS[reader](run))
    _one_line(capsys, code, "executable content", "refused without running it")
    assert not marker.exists()


def test_predict_and_load_run_refuse_a_planted_checkpoint(csv_run, tmp_path, capsys):
    run = _copy(csv_run, tmp_path)
    marker = tmp_path / MARKER
    PLANTS["torch-zip"](run / "checkpoint.pt", marker)
    (tmp_path / "new.csv").write_text("seq\nab\nabab\n")
    _one_line(capsys, main(["predict", "--run-dir", str(run), str(tmp_path / "new.csv")]), "executable content")
    with pytest.raises(FPTError, match="executable content"):
        fpt.load_run(run, device="cpu")
    assert not marker.exists()


def test_report_refuses_a_planted_checkpoint(finished_run, tmp_path, capsys):
    """`fpt report` draws the Bit XOR attention figure from the runs' checkpoints: a planted one is refused."""
    out = tmp_path / "sweep"
    run = out / "runs" / "fpt" / "bit-xor" / "lr0.01-seed0"
    shutil.copytree(finished_run, run)
    (out / "matrix.yaml").write_text(yaml.safe_dump({"name": "t", "tasks": ["bit-xor"],
                                                     "rows": [{"name": "FPT", "config": {}}]}))
    marker = tmp_path / MARKER
    PLANTS["torch-zip"](run / "checkpoint.pt", marker)
    code = main(["report", str(out)])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("fpt: error:")]
    assert code == 2 and len(errors) == 1 and "executable content" in errors[0], errors
    assert not marker.exists()


def test_cifar_batches_are_read_as_data_only(tmp_path, capsys, tiny_backbones):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    marker = tmp_path / MARKER
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), b"labels": list(range(10)) * 2}
        if name == "data_batch_2":
            d[b"batch_label"] = Payload(marker)
        with open(folder / name, "wb") as f:
            pickle.dump(d, f)
    code = main(["train", *_tiny(tiny_backbones), "--task", "cifar10", "--data-dir", str(tmp_path), "--steps", "2",
                 "--run-dir", str(tmp_path / "run")])
    _one_line(capsys, code, "data_batch_2", "executable content")
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_cifar_batches_of_plain_data_still_load(tmp_path):
    from fpt.datasets.readers import read_cifar_batches

    rng = np.random.default_rng(0)
    with open(tmp_path / "b", "wb") as f:  # as CIFAR-10's own files: protocol 2, numpy array, list of labels
        pickle.dump({b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [1, 2, 3, 4],
                     b"batch_label": b"training batch 1 of 5", b"filenames": [b"a.png"] * 4}, f, protocol=2)
    x, y = read_cifar_batches(tmp_path, ["b"])
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [1, 2, 3, 4]


def _backbone_with(tiny: str, tmp_path: Path, change) -> str:
    folder = tmp_path / "body"
    shutil.copytree(tiny, folder)
    change(folder)
    return str(folder)


def _custom_code(folder: Path) -> None:
    (folder / "modeling_evil.py").write_text(f"open({str(folder / MARKER)!r}, 'w')\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))


def _pickled_bin(folder: Path) -> None:
    for f in folder.glob("*.safetensors"):
        f.unlink()
    torch.save({"w": Payload(folder / MARKER)}, folder / "pytorch_model.bin")


@pytest.mark.parametrize("change,needle", [(_custom_code, "its own modelling code"),
                                           (_pickled_bin, "pickled weights only")], ids=["custom-code", "pickled-bin"])
def test_backbone_folders_with_code_are_refused(tiny_backbones, tmp_path, capsys, change, needle):
    body = _backbone_with(tiny_backbones["bert"], tmp_path, change)
    code = main(["train", "--backbone", body, "--task", "bit-xor", "--steps", "2", "--quiet", "--device", "cpu",
                 "--run-dir", str(tmp_path / "run")])
    _one_line(capsys, code, needle)
    assert not (Path(body) / MARKER).exists()


def test_a_checkpoint_of_an_earlier_fpt_loads_safely(finished_run, tmp_path, capsys):
    """Format 1 pickled numpy's RNG state as an ndarray: it loads (numpy's array constructors only), resumes."""
    run = _copy(finished_run, tmp_path)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    for key in ("format", "best", "data_sha256"):
        ckpt.pop(key)
    ckpt["rng"]["numpy"] = np.random.get_state()
    torch.save(ckpt, run / "checkpoint.pt")
    assert main(["evaluate", "--run-dir", str(run), "--device", "cpu", "--checkpoint", "last"]) == 0
    assert main(["train", "--run-dir", str(run), "--resume", "--steps", "8", "--quiet"]) == 0
    assert json.loads((run / "result.json").read_text())["steps"] == 8


def test_checkpoints_hold_only_tensors_and_data(finished_run):
    ckpt = torch.load(finished_run / "checkpoint.pt", weights_only=True)  # torch's restricted unpickler
    assert ckpt["format"] == 2 and set(ckpt["best"]) == {"step", "trainable"}


# ---- 2. the model you get is the model reported -----------------------------------------------------

def test_evaluate_prints_the_test_accuracy_result_json_reports(finished_run, capsys):
    result = json.loads((finished_run / "result.json").read_text())
    capsys.readouterr()
    assert main(["evaluate", "--run-dir", str(finished_run), "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["accuracy"] == result["test_accuracy"] and out["step"] == result["best_step"]


def test_training_measures_test_once(finished_run):
    records = [json.loads(line) for line in (finished_run / "metrics.jsonl").read_text().splitlines()]
    assert records and all("test_accuracy" not in r and r["val_accuracy"] is not None for r in records)


# ---- 3. records that say what ran --------------------------------------------------------------------

def test_the_lstm_row_records_the_lstm(tmp_path, capsys):
    run = tmp_path / "lstm"
    assert main(["train", "--model", "lstm", "--task", "bit-xor", "--steps", "2", "--eval-every", "2",
                 "--batch-size", "4", "--device", "cpu", "--run-dir", str(run)]) == 0
    banner = capsys.readouterr().err
    result = json.loads((run / "result.json").read_text())
    assert result["backbone"] is None and result["init"] == "random" and result["body"].startswith("LSTM 3 x 768")
    assert "minilm" not in json.dumps({k: v for k, v in result.items() if k != "config"})
    assert set(result["train"]) == {"input", "output", "recurrent", "layernorm"}
    assert "LSTM 3 x 768" in banner and "lora" not in banner and "minilm" not in banner


def test_default_run_directories_differ_per_row():
    from fpt.core.config import from_dict

    rows = [{}, {"model": "lstm"}, {"train": "all"}, {"train": "fpt,lora", "lora_r": 4}, {"init": "random"},
            {"layers": 3}]
    names = {from_dict({"task": "bit-xor", **row}).resolved_run_dir for row in rows}
    assert len(names) == len(rows)


def test_resume_on_changed_data_is_refused(csv_run, tmp_path, capsys):
    folder = tmp_path / "moved"
    shutil.copytree(csv_run.parent, folder)
    data = folder / "d.csv"
    data.write_text(data.read_text().replace("ab", "bc"))  # the vocabulary [a, b] becomes [b, c]
    config = yaml.safe_load((folder / "run" / "config.yaml").read_text())
    config["task"] = str(folder / "t.yaml")
    (folder / "run" / "config.yaml").write_text(yaml.safe_dump(config))
    code = main(["train", "--run-dir", str(folder / "run"), "--resume", "--steps", "6", "--quiet",
                 "--task", str(folder / "t.yaml")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "data" in err and "differ" in err, err


def test_another_runs_checkpoint_is_refused(finished_run, tiny_backbones, tmp_path, capsys):
    other = tmp_path / "other"
    assert main(["train", *_tiny(tiny_backbones), "--seed", "1", "--steps", "2", "--eval-every", "2",
                 "--run-dir", str(other)]) == 0
    run = _copy(finished_run, tmp_path)
    shutil.copy(other / "checkpoint.pt", run / "checkpoint.pt")
    capsys.readouterr()
    _one_line(capsys, main(["evaluate", "--run-dir", str(run), "--device", "cpu"]), "not this run's")


# ---- 4. faults that ended in a traceback --------------------------------------------------------------

def test_disk_full_at_a_checkpoint_is_one_line_and_leaves_no_tmp(tiny_backbones, tmp_path, capsys, monkeypatch):
    """The disk fills while checkpoint.pt's bytes are written (torch's zip writer used to raise RuntimeError
    here, past the OSError handler)."""
    import fpt.core.files

    real_fsync, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if os.readlink(f"/proc/self/fd/{fd}").endswith("checkpoint.pt.tmp"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(fpt.core.files.os, "fsync", fsync)
    run = tmp_path / "run"
    code = main(["train", *_tiny(tiny_backbones), "--steps", "4", "--eval-every", "2", "--run-dir", str(run)])
    _one_line(capsys, code, "No space left on device")
    assert not list(run.glob("*.tmp"))


def _task_file(tmp_path: Path, extra: str, fmt: str = "csv") -> str:
    (tmp_path / "d.csv").write_text("seq,label\n" + "".join(f"ab{'a' * (i % 3)},{i % 2}\n" for i in range(30)))
    (tmp_path / "t.yaml").write_text(f"format: {fmt}\npath: d.csv\n{extra}\n")
    return str(tmp_path / "t.yaml")


@pytest.mark.parametrize("extra,needle", [
    ("num_classes: two", "num_classes must be an integer"),
    ("val_fraction: abc", "val_fraction must be a number"),
    ("test_fraction: 1.5", "test_fraction must be a number"),
    ("image_size: 0", "image_size must be an integer"),
    ("image_size: big", "image_size must be an integer"),
    ("max_len: -3", "max_len must be a positive integer"),
    ("tokenize: words", "tokenize must be chars or whitespace"),
])
def test_task_file_values_of_the_wrong_type(tiny_backbones, tmp_path, capsys, extra, needle):
    code = main(["train", *_tiny(tiny_backbones), "--task", _task_file(tmp_path, extra), "--steps", "2",
                 "--run-dir", str(tmp_path / "run")])
    _one_line(capsys, code, needle)


def test_a_decompression_bomb_is_one_line(tiny_backbones, tmp_path, capsys):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(10):
            Image.new("L", (8, 8), color=i).save(tmp_path / "imgs" / cls / f"ok{i}.png")
    Image.new("1", (14000, 14000)).save(tmp_path / "imgs" / "a" / "bomb.png")  # 196 M pixels in a few KB
    (tmp_path / "t.yaml").write_text("format: image_folder\npath: imgs\nimage_size: 8\nchannels: 1\n")
    code = main(["train", *_tiny(tiny_backbones), "--task", str(tmp_path / "t.yaml"), "--steps", "2",
                 "--run-dir", str(tmp_path / "run")])
    _one_line(capsys, code, "bomb.png")


def test_a_task_json_that_disagrees_with_the_checkpoint(csv_run, tmp_path, capsys):
    run = _copy(csv_run, tmp_path)
    task = json.loads((run / "task.json").read_text())
    task["spec"]["vocab_size"] = 10**9  # built as is, an embedding of 10^9 rows: hundreds of GB
    (run / "task.json").write_text(json.dumps(task))
    _one_line(capsys, main(["evaluate", "--run-dir", str(run), "--device", "cpu"]), "vocabulary size")


def test_a_batch_that_cannot_fit_is_one_line_naming_one_that_does(tiny_backbones, tmp_path, capsys):
    code = main(["train", "--task", "bit-xor", "--batch-size", "100000000", "--steps", "2", "--quiet",
                 "--device", "cpu", "--run-dir", str(tmp_path / "run")])
    err = _one_line(capsys, code, "the largest batch that fits is about")
    fits = int(err.rsplit("--batch-size ", 1)[1].rstrip(")"))
    assert 0 < fits < 100000000
    assert not (tmp_path / "run").exists()


def test_overwrite_removes_tensorboard_events(finished_run, tiny_backbones, tmp_path):
    run = _copy(finished_run, tmp_path)
    (run / "events.out.tfevents.123.host").write_bytes(b"old")
    assert main(["train", *_tiny(tiny_backbones), "--steps", "2", "--eval-every", "2", "--run-dir", str(run),
                 "--overwrite"]) == 0
    assert not (run / "events.out.tfevents.123.host").exists()
