"""Failures of the user's making: each is one line and exit 2 (or, where the issue is recoverable, the run
goes on), never a traceback, a silently wrong number or two runs mixed in one folder. One table row per
case (docs/testing.md, "Failure cases"); the lock cases start real processes."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from fpt.cli import main

CLI = [sys.executable, "-m", "fpt"]


def _tiny(tiny_backbones) -> list[str]:
    return ["--backbone", tiny_backbones["bert"], "--batch-size", "4", "--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def base_run(tiny_backbones, tmp_path_factory) -> Path:
    """A finished 4-step Bit XOR run made with non-default flags (lr, dropout): checkpoint at step 4."""
    run = tmp_path_factory.mktemp("base") / "run"
    assert main(["train", *_tiny(tiny_backbones), "--lr", "0.01", "--dropout", "0.0", "--steps", "4",
                 "--eval-every", "2", "--run-dir", str(run)]) == 0
    return run


def _copy(base: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(base, run)
    return run


# ---- data files -------------------------------------------------------------------------------------

def _csv(tmp_path: Path, body: bytes | str) -> str:
    data = tmp_path / "d.csv"
    data.write_bytes(body if isinstance(body, bytes) else body.encode())
    (tmp_path / "t.yaml").write_text("format: csv\npath: d.csv\n")
    return str(tmp_path / "t.yaml")


def _good_rows(n: int = 30) -> str:
    return "".join(f"{'ab' * (i % 4 + 1)},{i % 2}\n" for i in range(n))


def _npz(tmp_path: Path, **arrays) -> str:
    rng = np.random.default_rng(0)
    base = {"x_train": rng.normal(size=(20, 8)).astype(np.float32), "y_train": np.arange(20) % 2,
            "x_test": rng.normal(size=(6, 8)).astype(np.float32), "y_test": np.arange(6) % 2}
    base.update(arrays)
    np.savez(tmp_path / "a.npz", **base)
    (tmp_path / "t.yaml").write_text("format: npz\npath: a.npz\npatch_size: 4\n")
    return str(tmp_path / "t.yaml")


def _with(array: np.ndarray, row: int, value) -> np.ndarray:
    array = array.copy()
    array[row, 0] = value
    return array


_X = np.random.default_rng(1).normal(size=(20, 8)).astype(np.float32)
_IDS = np.random.default_rng(2).integers(1, 9, size=(20, 6))


# ---- the table --------------------------------------------------------------------------------------

@dataclass
class Case:
    """`fpt ARGV` (made by `argv(tmp_path, backbone_flags, base_run)`) exits `code`; with code 2, stderr is
    one line holding `match`; `then(tmp_path)` checks what is left on disk."""

    id: str
    argv: Callable
    match: str
    code: int = 2
    then: Callable | None = None


def _train(*extra):
    return lambda tmp, tiny, base: ["train", *tiny, "--steps", "2", "--eval-every", "2",
                                    "--run-dir", str(tmp / "out"), *extra]


def _on_task(make):
    return lambda tmp, tiny, base: ["train", *tiny, "--task", make(tmp), "--steps", "2", "--eval-every", "2",
                                    "--run-dir", str(tmp / "out")]


def _resume(prepare, *extra):
    def argv(tmp, tiny, base):
        run = _copy(base, tmp)
        prepare(run)
        return ["train", "--run-dir", str(run), "--resume", "--quiet", *extra]
    return argv


def _tear_metrics(run: Path) -> None:
    """A crash in the middle of writing a record: its line is cut short, without a newline."""
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "train_lo')


def _nothing_left(tmp):
    assert not (tmp / "out").exists()


def _metrics_clean(tmp):
    records = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6]


def _file(tmp):
    (tmp / "f").write_text("x")
    return tmp / "f"


def _read_only_parent(tmp):
    if os.geteuid() == 0:  # root writes through any mode bits: a read-only filesystem instead
        return Path("/sys/fpt-test-run")
    (tmp / "ro").mkdir()
    (tmp / "ro").chmod(0o555)
    return tmp / "ro" / "run"


CASES = [
    # 2. non-finite data is refused at load, naming the file, the split and the row
    Case("npz-inf-in-test", _on_task(lambda t: _npz(t, x_test=_with(_X[:6], 3, np.inf))), "x_test row 3 holds inf",
         then=_nothing_left),
    Case("npz-nan-in-train", _on_task(lambda t: _npz(t, x_train=_with(_X, 7, np.nan))), "x_train row 7 holds nan"),
    # 3. labels that are not integers
    Case("csv-label-0.7", _on_task(lambda t: _csv(t, "seq,label\n" + _good_rows(5) + "ab,0.7\n")),
         "line 7: label '0.7' is not an integer"),
    Case("npz-float-labels", _on_task(lambda t: _npz(t, y_train=np.arange(20) % 2 + 0.6)),
         "y_train row 0: label 0.6 is not an integer"),
    # 4. bad data found at load, not mid-run
    Case("npz-val-width", _on_task(lambda t: _npz(t, x_val=_X[:4, :4], y_val=np.arange(4) % 2)),
         "x_val is float32 (4, 4), x_train float32 (20, 8): every split needs the same kind and width"),
    Case("npz-negative-ids", _on_task(lambda t: _npz(t, x_train=_with(_IDS, 5, -1), x_test=_IDS[:6])),
         "x_train row 5: token id -1 is negative"),
    # 5. one line, not a traceback
    Case("resume-truncated-checkpoint",
         _resume(lambda r: (r / "checkpoint.pt").write_bytes((r / "checkpoint.pt").read_bytes()[:1000])),
         "checkpoint.pt is corrupt or truncated"),
    Case("resume-empty-checkpoint", _resume(lambda r: (r / "checkpoint.pt").write_bytes(b"")),
         "start it over with --overwrite"),
    Case("resume-random-checkpoint", _resume(lambda r: (r / "checkpoint.pt").write_bytes(os.urandom(4096))),
         "checkpoint.pt is corrupt or truncated"),
    Case("resume-torn-metrics-line",
         _resume(_tear_metrics, "--steps", "6"),
         "", code=0, then=_metrics_clean),
    Case("run-dir-is-a-file", lambda t, tiny, b: ["train", *tiny, "--run-dir", str(_file(t))], "is a file"),
    Case("run-dir-under-a-file", lambda t, tiny, b: ["train", *tiny, "--run-dir", str(_file(t) / "run")],
         "which is a file"),
    Case("run-dir-read-only-parent", lambda t, tiny, b: ["train", *tiny, "--run-dir", str(_read_only_parent(t))],
         "cannot create run directory"),
    Case("lr-nan", _train("--lr", "nan"), "lr must be a finite number > 0, got nan", then=_nothing_left),
    Case("csv-not-utf8", _on_task(lambda t: _csv(t, b"seq,label\nab,1\nc\xffd,0\n" + _good_rows().encode())),
         "line 3: byte 0xff is not UTF-8 text"),
    Case("csv-label-inf", _on_task(lambda t: _csv(t, "seq,label\n" + _good_rows() + "ab,inf\n")),
         "line 32: label 'inf' is not an integer"),
    Case("csv-header-only", _on_task(lambda t: _csv(t, "seq,label\n")), "has a header but no rows"),
    Case("npz-labels-n-by-2", _on_task(lambda t: _npz(t, y_train=np.zeros((20, 2), dtype=np.int64))),
         "y_train must hold one label per row, shape (20,), got (20, 2)"),
    Case("npz-zero-rows", _on_task(lambda t: _npz(t, x_test=_X[:0], y_test=np.zeros(0, dtype=np.int64))),
         "x_test has no rows"),
    # 7. values that should be refused, each naming its key and value
    Case("grad-clip-nan", _train("--grad-clip", "nan"), "grad_clip must be a finite number >= 0"),
    Case("lr-inf", _train("--lr", "inf"), "lr must be a finite number > 0, got inf"),
    Case("weight-decay-negative", _train("--weight-decay", "-1"), "weight_decay must be a finite number >= 0, got -1"),
    Case("bit-xor-negative-bits", _train("--task", "bit-xor", "--task-options", "{n_bits: -3}"),
         "bit-xor: task option n_bits must be a positive integer, got -3", then=_nothing_left),
    Case("bit-memory-mask-prob", _train("--task", "bit-memory", "--task-options", "{mask_prob: 1.5}"),
         "bit-memory: task option mask_prob must be in [0, 1], got 1.5", then=_nothing_left),
    Case("resume-steps-below", _resume(lambda r: None, "--steps", "2"), "steps 2 is below the run's 4"),
    # 8. --resume reads the run's config.yaml: flags agree with it, --steps may grow
    Case("resume-plain", _resume(lambda r: None), "", code=0),
    Case("resume-more-steps", _resume(lambda r: None, "--steps", "6"), "", code=0,
         then=lambda t: json.loads((t / "run" / "result.json").read_text())["steps"] == 6),
    Case("resume-other-lr", _resume(lambda r: None, "--lr", "0.1"), "lr 0.1 here, 0.01 in the run"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_failure_case(case, tiny_backbones, base_run, tmp_path, capsys):
    argv = case.argv(tmp_path, _tiny(tiny_backbones), base_run)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == case.code, err
    if case.code == 2:
        assert len(err.splitlines()) == 1 and err.startswith("fpt: error:"), err
        assert case.match in err, err
    if case.then is not None:
        assert case.then(tmp_path) is not False


# ---- writes that fail (disk full, quota) ------------------------------------------------------------

def _full_disk_at(monkeypatch, save_number: int):
    """torch.save writes part of the file, then fails as a full disk does, at its `save_number`-th call."""
    real, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == save_number:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def test_failed_checkpoint_write_keeps_the_previous_one(tiny_backbones, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    argv = ["train", *_tiny(tiny_backbones), "--steps", "6", "--eval-every", "2", "--run-dir", str(run)]
    _full_disk_at(monkeypatch, 2)  # the step-4 checkpoint
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No space left on device" in err and "--resume" in err, err
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "config.yaml", "metrics.jsonl"]
    assert torch.load(run / "checkpoint.pt", weights_only=False)["state"]["step"] == 2
    monkeypatch.undo()
    assert main(["train", "--run-dir", str(run), "--resume", "--quiet"]) == 0
    assert json.loads((run / "result.json").read_text())["steps"] == 6


def test_run_without_a_checkpoint_starts_over_with_overwrite(tiny_backbones, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    argv = ["train", *_tiny(tiny_backbones), "--steps", "4", "--eval-every", "2", "--run-dir", str(run)]
    _full_disk_at(monkeypatch, 1)  # the first checkpoint
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "metrics.jsonl"]  # no checkpoint.pt.tmp
    monkeypatch.undo()
    for again in (argv, ["train", "--run-dir", str(run), "--resume"]):  # neither restart nor resume ...
        assert main(again) == 2
        assert "--overwrite" in capsys.readouterr().err  # ... but each says how to start over
    assert main(argv + ["--overwrite"]) == 0
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [2, 4]


# ---- one process per run directory ------------------------------------------------------------------

class _Holder:
    """Another process holding `folder`'s lock, as a training run would (killed with SIGKILL on exit)."""

    def __init__(self, folder: Path):
        code = ("import sys, time; from fpt.core.files import hold_folder\n"
                "with hold_folder(__import__('pathlib').Path(sys.argv[1])):\n"
                "    print('locked', flush=True); time.sleep(300)\n")
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "locked"

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def holder():
    held = []
    yield lambda folder: held.append(_Holder(folder)) or held[-1]
    for h in held:
        if h.proc.poll() is None:
            h.kill()


def test_two_processes_on_one_run_dir_do_not_mix(tiny_backbones, tmp_path):
    """Two `fpt train` started together on one --run-dir (seeds 3 and 4): one trains, the other stops in
    one line (exit 2); config.yaml, metrics.jsonl, checkpoint.pt and result.json are all one run's."""
    run = tmp_path / "run"
    args = ["train", *_tiny(tiny_backbones), "--steps", "40", "--eval-every", "10", "--run-dir", str(run)]
    procs = {seed: subprocess.Popen(CLI + args + ["--seed", str(seed)], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for seed in (3, 4)}
    outs = {seed: (p.wait(timeout=300), *p.communicate()) for seed, p in procs.items()}
    assert sorted(code for code, _, _ in outs.values()) == [0, 2], outs
    winner = next(seed for seed, (code, _, _) in outs.items() if code == 0)
    loser_err = next(err for code, _, err in outs.values() if code == 2).strip()
    assert len(loser_err.splitlines()) == 1, loser_err
    assert (f"in use by process {procs[winner].pid}" in loser_err) or ("already holds a run" in loser_err)
    assert f"seed: {winner}" in (run / "config.yaml").read_text()
    assert json.loads((run / "result.json").read_text())["seed"] == winner
    assert torch.load(run / "checkpoint.pt", weights_only=False)["config"]["seed"] == winner
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [10, 20, 30, 40]
    assert not (run / ".fpt.lock").exists()


def test_locked_run_dir_names_the_holder_and_is_never_stale(tiny_backbones, tmp_path, holder, capsys):
    run = tmp_path / "run"
    argv = ["train", *_tiny(tiny_backbones), "--steps", "2", "--eval-every", "2", "--run-dir", str(run)]
    h = holder(run)
    for extra in ([], ["--overwrite"], ["--resume"]):
        assert main(argv + extra) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"is in use by process {h.proc.pid}" in err, err
    h.kill()  # SIGKILL: the OS drops the lock, the next run takes the folder
    assert main(argv) == 0


def test_sweep_folder_and_its_runs_are_locked(tiny_backbones, tmp_path, holder, capsys):
    """A second `fpt reproduce` on one --out stops in one line; a run another process holds is skipped by
    the sweep and by a Ray task alike (fpt/paper/ray_sweep.py runs `train_run`), and no error is recorded."""
    from fpt.paper.ray_sweep import _task
    from fpt.paper.reproduce import load_matrix, plan, train_run

    matrix = tmp_path / "m.yaml"
    matrix.write_text(f"name: m\ntasks: [bit-xor]\ndefaults: {{backbone: {tiny_backbones['bert']}}}\n"
                      "rows:\n  - {name: A, config: {init: pretrained}}\n")
    out = tmp_path / "out"
    h = holder(out)
    assert main(["reproduce", str(matrix), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"sweep folder {out} is in use by process {h.proc.pid}" in err, err
    h.kill()

    [run] = [r for r in plan(load_matrix(str(matrix)), budget="smoke", seeds=1, out=out) if r.config is not None]
    out.mkdir(exist_ok=True)
    (out / "sweep.json").write_text("{}")
    h = holder(run.run_dir)
    assert train_run(run, progress=False).startswith(f"skipped: run directory {run.run_dir} is in use by "
                                                     f"process {h.proc.pid}")
    threads = torch.get_num_threads()
    try:
        reply = _task(run, cwd=os.getcwd(), out=str(out), env={}, threads=threads, die=False)
    finally:
        torch.set_num_threads(threads)
    assert reply["line"].startswith("skipped:") and f"process {h.proc.pid}" in reply["line"]
    assert not (run.run_dir / "error.json").exists() and not (run.run_dir / "metrics.jsonl").exists()
    h.kill()
    assert train_run(run, progress=False).startswith("test accuracy")
