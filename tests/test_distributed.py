"""Cluster scale on the CPU: 2-process DDP over gloo, and sweeps on a local Ray cluster.

Both must give the numbers of one process: DDP the same final weights (to 1e-5 relative) and loss
curve for the same seed and global batch, Ray the same results.csv / table.md as a sequential sweep,
even when a worker process is killed mid-run.
"""
import csv
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fpt.cli import main
from fpt.core.config import TrainConfig
from fpt.run.launch import train

# dropout 0: dropout noise differs across world sizes (each rank draws its own masks)
RUN = dict(task="bit-xor", steps=8, eval_every=4, batch_size=8, dropout=0.0, device="cpu")
KILLED = "full-lstm/bit-xor/lr0.0003-seed0"  # the run whose worker the Ray test kills after a checkpoint

needs_two_cores = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="2-process DDP needs 2 CPU cores")


def _flags(backbone: str, run_dir: Path, **changes) -> list[str]:
    values = {**RUN, "backbone": backbone, "run_dir": str(run_dir), **changes}
    return [a for k, v in values.items() for a in ("--" + k.replace("_", "-"), str(v))]


def _fpt(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "fpt", *argv], capture_output=True, text=True, env=env,
                          timeout=300)


def _ddp(backbone: str, run_dir: Path, *extra: str, **changes) -> dict:
    """`fpt train --nproc 2`: its result line (rank 0 prints the only stdout line)."""
    proc = _fpt("train", *_flags(backbone, run_dir, **changes), "--nproc", "2", "--quiet", *extra)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 1, proc.stdout
    return json.loads(proc.stdout)


def _one(backbone: str, run_dir: Path, *, resume: bool = False, **changes) -> dict:
    cfg = TrainConfig(**{**RUN, "backbone": backbone, "run_dir": str(run_dir), **changes})
    return train(cfg, resume=resume, progress=False)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoint.pt", weights_only=False)["trainable"]


def _max_rel(a: dict, b: dict) -> float:
    """Largest |a - b| relative to the largest |a|, over every trainable tensor."""
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max() / a[k].abs().max()) for k in a)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def one_process(tiny_backbones, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("one-process") / "run"
    _one(tiny_backbones["gpt2"], run_dir)
    return run_dir


@needs_two_cores
def test_two_processes_match_one(one_process, tiny_backbones, tmp_path):
    run_dir = tmp_path / "ddp"
    result = _ddp(tiny_backbones["gpt2"], run_dir)
    assert result["steps"] == 8
    rel = _max_rel(_weights(one_process), _weights(run_dir))
    curve = []
    for ours, single in zip(_metrics(run_dir), _metrics(one_process), strict=True):  # the loss curve
        assert ours["step"] == single["step"]
        for key in ("train_loss", "val_loss"):
            assert ours[key] == pytest.approx(single[key], rel=1e-5), key
            curve.append(abs(ours[key] - single[key]) / abs(single[key]))
        for key in ("train_accuracy", "val_accuracy"):
            assert ours[key] == pytest.approx(single[key], abs=1e-3), key  # a near-tie may flip
    single = json.loads((one_process / "result.json").read_text())
    assert result["test_loss"] == pytest.approx(single["test_loss"], rel=1e-5)  # measured once, at the end
    assert result["best_step"] == single["best_step"]
    print(f"2 gloo processes vs 1: weights {rel:.1e}, losses {max(curve):.1e} (largest relative differences)")
    assert rel < 1e-5
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert len(ckpt["rank_rng"]) == 2  # both ranks' dropout streams
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint.pt", "config.yaml", "metrics.jsonl",
                                                        "result.json"]


@needs_two_cores
@pytest.mark.parametrize("first", [2, 1])
def test_resume_at_another_world_size(one_process, tiny_backbones, tmp_path, first):
    """Half a run in `first` process(es), the rest in the other count: the uninterrupted weights."""
    backbone, run_dir = tiny_backbones["gpt2"], tmp_path / "run"
    if first == 2:
        _ddp(backbone, run_dir, steps=4)
        _one(backbone, run_dir, steps=8, resume=True)
    else:
        _one(backbone, run_dir, steps=4)
        _ddp(backbone, run_dir, "--resume", steps=8)
    assert _max_rel(_weights(one_process), _weights(run_dir)) < 1e-5
    assert [m["step"] for m in _metrics(run_dir)] == [4, 8]


@needs_two_cores
def test_ddp_resume_with_dropout_is_exact(tiny_backbones, tmp_path):
    """Each rank's own dropout stream is checkpointed: a resumed 2-process run is the uninterrupted one."""
    backbone = tiny_backbones["gpt2"]
    _ddp(backbone, tmp_path / "full", dropout=0.1)
    _ddp(backbone, tmp_path / "resumed", dropout=0.1, steps=4)
    _ddp(backbone, tmp_path / "resumed", "--resume", dropout=0.1)
    full, resumed = _weights(tmp_path / "full"), _weights(tmp_path / "resumed")
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_bad_nproc_is_one_line(tiny_backbones, tmp_path, capsys):
    cores = len(os.sched_getaffinity(0))
    cases = {str(cores + 1): f"is more than the {cores} CPU core(s) here", "0": "at least 1"}
    if cores >= 2:
        cases["2 --batch-size 7"] = "does not divide into 2 processes"
    for nproc, message in cases.items():
        argv = ["train", *_flags(tiny_backbones["gpt2"], tmp_path / "run"), "--nproc", *nproc.split()]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "run").exists()


# --- Ray ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray cluster of two one-CPU worker nodes on this machine (the head takes no tasks)."""
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'fpt[ray]'")
    if torch.cuda.is_available():
        pytest.skip("compares CPU Ray workers with a sequential sweep, which would take this machine's GPU")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0,
                                                            "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=1, num_gpus=0)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def _csv(out: Path) -> list[dict]:
    """results.csv without what differs between two sweeps: wall time, and the --out folder in run_dir."""
    rows = list(csv.DictReader(open(out / "results.csv")))
    for r in rows:
        del r["wall_time_s"]
        r["run_dir"] = str(Path(r["run_dir"]).relative_to(out))
    return rows


def _accuracies(out: Path) -> str:
    """table.md up to its wall-time table."""
    return (out / "table.md").read_text().split("Wall time per run")[0]


def test_ray_sweep_equals_sequential_despite_a_killed_worker(ray_cluster, tiny_backbones, tmp_path, capsys,
                                                             monkeypatch):
    smoke = ["reproduce", "table1", "--budget", "smoke", "--backbone", tiny_backbones["gpt2"], "--quiet"]
    threads, started = torch.get_num_threads(), time.perf_counter()
    torch.set_num_threads(1)  # as in each one-CPU Ray task (the result records the thread count)
    try:
        assert main(smoke + ["--out", str(tmp_path / "sequential")]) == 0
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()
    timings = {"sequential": time.perf_counter() - started}

    # the first attempt of one run SIGKILLs its worker process after its first checkpoint
    monkeypatch.setenv("FPT_RAY_DIE_AFTER_CHECKPOINT", KILLED)
    out = tmp_path / "ray"
    started = time.perf_counter()
    assert main(smoke + ["--out", str(out), "--ray", ray_cluster.address]) == 0
    timings["Ray, 2 workers, one killed"] = time.perf_counter() - started
    err = capsys.readouterr().err
    assert "submitting 8 of 8 runs to the Ray cluster" in err
    assert "Full LSTM / bit-xor / lr 0.0003 / seed 0: test accuracy" in err
    assert "resumed from its checkpoint after a worker died" in err
    assert _accuracies(out) == _accuracies(tmp_path / "sequential")  # wall times differ, accuracies do not
    assert _csv(out) == _csv(tmp_path / "sequential")

    # finished runs are not resubmitted; a local Ray instance (no address) runs the one that is missing
    monkeypatch.delenv("FPT_RAY_DIE_AFTER_CHECKPOINT")
    before = (out / "runs" / KILLED / "result.json").read_text()
    redo = out / "runs" / "fpt" / "bit-xor" / "lr0.001-seed0"
    expected = json.loads((redo / "result.json").read_text())
    for f in redo.iterdir():
        f.unlink()
    started = time.perf_counter()
    assert main(smoke + ["--out", str(out), "--ray"]) == 0
    timings["local Ray instance, 1 run"] = time.perf_counter() - started
    err = capsys.readouterr().err
    assert "submitting 1 of 8 runs to a local Ray instance" in err
    assert (out / "runs" / KILLED / "result.json").read_text() == before
    again = json.loads((redo / "result.json").read_text())
    assert {k: v for k, v in again.items() if k != "wall_time_s"} == \
        {k: v for k, v in expected.items() if k != "wall_time_s"}
    assert _csv(out) == _csv(tmp_path / "sequential")
    with capsys.disabled():
        print("\ntable1 smoke sweeps: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_argv(backbone: str, out: Path, *ray: str) -> list[str]:
    return ["reproduce", "table1", "--budget", "smoke", "--backbone", backbone, "--out", str(out), "--ray", *ray]


def test_unreachable_ray_cluster_is_one_line(tiny_backbones, tmp_path, capsys):
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'fpt[ray]'")
    port = _closed_port()
    for address, message in [(f"127.0.0.1:{port}", f"cannot reach the Ray cluster at 127.0.0.1:{port}"),
                             (f"ray://127.0.0.1:{port}", f"cannot reach the Ray cluster at ray://127.0.0.1:{port}"),
                             ("no-port", "give HOST:PORT, ray://HOST:PORT or auto")]:
        assert main(_ray_argv(tiny_backbones["gpt2"], tmp_path / "o", address)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "o").exists()


def test_ray_not_installed_is_one_line(tiny_backbones, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    assert main(_ray_argv(tiny_backbones["gpt2"], tmp_path / "o")) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["fpt: error: Ray is not installed: pip install 'fpt[ray]'"]
    assert not (tmp_path / "o").exists()
