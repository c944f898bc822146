"""`fpt reproduce MATRIX --ray [ADDRESS]`: every planned run as one Ray task.

Ray is an optional extra (`pip install 'fpt[ray]'`); fpt builds no scheduler of its own.

- Where: no address starts a new local Ray instance on this machine (all its CPUs and GPUs);
  `auto` joins the cluster this machine is part of (`ray start` ran here); `ray://HOST:PORT`
  connects through Ray Client; `HOST:PORT` joins a cluster's GCS address directly.
- What: each run not finished yet is one task that needs `cpus` CPUs and `gpus` GPUs (by default
  1 CPU, and 1 GPU when the cluster has GPUs and the run's device is not cpu). Finished runs (with a
  result.json) are never resubmitted.
- Faults: when a worker process or its node dies mid-run, Ray retries the task (`retries` times);
  the retry resumes the run from its last checkpoint. The run directories live under --out, so
  --out must be shared storage, visible at the same path on every node (each task checks); fpt and
  its data must be installed on every node.
- Results: each task runs the same `fpt.paper.reproduce.train_run` as a sequential sweep, into the same
  run directories, so `fpt.paper.report` makes the same results.csv and table.md from them.

NOTE: FPT_RAY_DIE_AFTER_CHECKPOINT=<row>/<task>/<lr..-seed..> (a run directory under OUT/runs) is a
fault injection for tests: the first attempt of that run kills its own worker process (SIGKILL)
right after writing its first checkpoint.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from fpt.core.errors import FPTError
from fpt.paper.reproduce import PlannedRun, label, record_error, run_state, train_run

INSTALL = "pip install 'fpt[ray]'"
CONNECT_TIMEOUT_S = 5.0
DIE_AFTER_CHECKPOINT = "FPT_RAY_DIE_AFTER_CHECKPOINT"
LOCAL = "local"  # `--ray` without an address


def require_ray():
    try:
        import ray
    except ImportError:
        raise FPTError(f"Ray is not installed: {INSTALL}") from None
    return ray


def _check_reachable(address: str) -> None:
    """One TCP connection to HOST:PORT (or ray://HOST:PORT), so a wrong address fails in seconds."""
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError:
        host = port = None
    if not host or not port:
        raise FPTError(f"--ray {address!r}: give HOST:PORT, ray://HOST:PORT or auto")
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as e:
        raise FPTError(f"cannot reach the Ray cluster at {address}: {e.strerror or e}") from None


def connect(address: str):
    """Start a local Ray instance (address LOCAL) or join a running cluster; returns the ray module."""
    ray = require_ray()
    quiet = dict(logging_level=logging.ERROR, log_to_driver=False)
    try:
        if address == LOCAL:
            ray.init(address="local", include_dashboard=False, **quiet)  # a new instance, never a running one
        elif address == "auto":
            ray.init(address="auto", **quiet)
        else:
            _check_reachable(address)
            # something answers there: give it CONNECT_TIMEOUT_S to prove it is a Ray GCS (Ray's default: 20 s)
            os.environ.setdefault("RAY_gcs_server_port_wait_time_s", str(int(CONNECT_TIMEOUT_S)))
            ray.init(address=address, **quiet)
    except FPTError:
        raise
    except Exception as e:  # ConnectionError, TimeoutError, RuntimeError from Ray
        where = "a running Ray cluster on this machine (--ray auto)" if address == "auto" else address
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise FPTError(f"cannot connect to {where}: {first}") from None
    return ray


def _die_after_first_checkpoint() -> None:
    """Fault injection (tests): SIGKILL this worker process once the run's first checkpoint is saved."""
    import signal

    import fpt.run.loop

    save = fpt.run.loop.save_checkpoint

    def save_then_die(obj, path):
        save(obj, path)
        os.kill(os.getpid(), signal.SIGKILL)

    fpt.run.loop.save_checkpoint = save_then_die


def _task(run: PlannedRun, *, cwd: str, out: str, env: dict, threads: int, die: bool) -> dict:
    """One run, on a Ray worker: the driver's folder and environment, then `train_run`."""
    import torch

    host = socket.gethostname()
    if not os.path.isdir(cwd) or not (Path(cwd) / out / "sweep.json").is_file():
        return {"fatal": f"the Ray worker on {host} cannot see {Path(cwd) / out}: --out must be shared "
                         f"storage at the same path on every node"}
    os.chdir(cwd)  # relative paths (--out, data, backbone folders) mean what they mean on the driver
    os.environ.update(env)
    torch.set_num_threads(threads)
    state = run_state(run)
    if die and state == "todo":
        _die_after_first_checkpoint()
    return {"line": train_run(run, progress=False), "host": host, "state": state}


def _resources(ray, runs: list[PlannedRun], cpus: float | None, gpus: float | None) -> tuple[float, float]:
    cluster = ray.cluster_resources()
    cpus = 1.0 if cpus is None else cpus
    if gpus is None:  # one GPU per run where there are GPUs, unless the runs ask for the CPU
        gpus = 1.0 if cluster.get("GPU", 0) >= 1 and any(r.config.device != "cpu" for r in runs) else 0.0
    if cpus <= 0 or gpus < 0:
        raise FPTError("--ray-cpus must be positive and --ray-gpus at least 0")
    for name, need in (("CPU", cpus), ("GPU", gpus)):
        if need > 0 and need > max((n.get("Resources", {}).get(name, 0) for n in ray.nodes() if n.get("Alive")),
                                   default=0):
            raise FPTError(f"each run asks for {need:g} {name}(s), but no node of the Ray cluster has that many "
                           f"(cluster total: {cluster.get(name, 0):g}); lower --ray-{name.lower()}s")
    return cpus, gpus


def execute(ray, runs: list[PlannedRun], *, address: str, out: Path, cpus: float | None = None,
            gpus: float | None = None, retries: int = 3) -> None:
    """Submit every unfinished planned run to Ray (connected by `connect`) and wait for all of them."""
    planned = [r for r in runs if r.config is not None]
    todo = [r for r in planned if run_state(r) != "done"]
    if not todo:
        print(f"all {len(planned)} runs finished already: nothing submitted to Ray", file=sys.stderr)
        return
    ray = ray or connect(address)
    try:
        cpus, gpus = _resources(ray, todo, cpus, gpus)
        die = os.environ.get(DIE_AFTER_CHECKPOINT)
        env = {k: v for k, v in os.environ.items()
               if k.startswith(("FPT_", "HF_")) or k in ("TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM")}
        remote = ray.remote(_task).options(num_cpus=cpus, num_gpus=gpus, max_retries=retries,
                                           retry_exceptions=False)
        where = "a local Ray instance" if address == LOCAL else f"the Ray cluster at {address}"
        total = ray.cluster_resources()
        print(f"submitting {len(todo)} of {len(planned)} runs to {where} ({total.get('CPU', 0):g} CPUs, "
              f"{total.get('GPU', 0):g} GPUs; each run {cpus:g} CPU, {gpus:g} GPU; {len(planned) - len(todo)} "
              f"finished already)", file=sys.stderr)
        pending = {}  # task -> (run, its state when submitted)
        for run in todo:
            is_target = die is not None and run.run_dir.relative_to(out / "runs").as_posix() == die
            ref = remote.remote(run, cwd=os.getcwd(), out=str(out), env=env, threads=max(1, int(cpus)),
                                die=is_target)
            pending[ref] = (run, run_state(run))
        started, finished = time.perf_counter(), 0
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            run, submitted = pending.pop(ref)
            finished += 1
            head = f"[{finished}/{len(todo)}] {label(run)}"
            try:
                reply = ray.get(ref)
            except ray.exceptions.RayError as e:  # retries used up, or an unexpected exception in the task
                cause = getattr(e, "cause", None) or e
                message = (str(cause).strip().splitlines() or [type(cause).__name__])[-1]
                record_error(run, f"Ray task failed: {message}")
                print(f"{head}: failed on Ray: {message}", file=sys.stderr)
                continue
            if "fatal" in reply:
                for other in pending:
                    ray.cancel(other, force=True)
                raise FPTError(reply["fatal"])
            retried = reply["state"] == "partial" and submitted == "todo"
            print(f"{head}: {reply['line']} (on {reply['host']}, {time.perf_counter() - started:.0f}s into the "
                  f"sweep{'; resumed from its checkpoint after a worker died' if retried else ''})",
                  file=sys.stderr)
    finally:
        ray.shutdown()
