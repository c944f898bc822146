"""A run's files: its directory (owned, checked against the request), the checkpoint it resumes from, and
the one-line messages for a write that fails. What one run writes:

  config.yaml     the resolved config
  metrics.jsonl   one record per evaluation (train loss/accuracy since the last one, validation)
  checkpoint.pt   trainable weights (last and best-validation), optimizer and every RNG state, as tensors
                  and plain data only (fpt/run/checkpoint.py: loading one never runs code)
  result.json     the final record (fpt/run/result.py): test accuracy measured once, at the end, on the
                  best-validation weights, the model `fpt evaluate` / `predict` / `load_run` use
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

from fpt.run.checkpoint import read_checkpoint
from fpt.core.config import TrainConfig
from fpt.core.errors import FPTError
from fpt.core.files import WriteFailed, hold_folder, write_text_atomic

CHECKPOINT = "checkpoint.pt"
RESULT = "result.json"
METRICS = "metrics.jsonl"
TASK = "task.json"  # a task file's run: what reading new inputs as its own needs (fpt/inference/__init__.py)
# Config keys a resumed run may change: they do not alter what was already computed.
RESUMABLE_CHANGES = {"steps", "early_stop", "device", "run_dir", "eval_batch_size", "data_dir",
                     "export_backbone", "tensorboard"}
CHECKPOINT_KEYS = ("config", "weights_sha256", "trainable", "optimizer", "rng", "state")
# what `--overwrite` deletes: every file a run (or a sweep's record of it) writes into its directory
RUN_FILES = (CHECKPOINT, RESULT, METRICS, "config.yaml", "error.json", CHECKPOINT + ".tmp", RESULT + ".tmp",
             "config.yaml.tmp", TASK)
START_OVER = "start it over with --overwrite (deletes the run's files) or choose another --run-dir"

def prepare_run_dir(cfg: TrainConfig, *, resume: bool, overwrite: bool, held: contextlib.ExitStack) -> Path:
    """Own the run directory (its lock, held until `held` closes) and check that it fits the request:
    --resume needs a checkpoint, --overwrite empties it, a new run needs it free of another run."""
    run_dir = cfg.resolved_run_dir
    if resume and overwrite:
        raise FPTError("--resume continues a run and --overwrite starts it over: give one of them")
    held.enter_context(hold_folder(run_dir, what="run directory", hint="or choose another --run-dir"))
    if resume:
        if not (run_dir / CHECKPOINT).exists():
            stopped = (f" (the run stopped before its first checkpoint: {START_OVER})"
                       if (run_dir / METRICS).exists() else "")
            raise FPTError(f"cannot resume: no checkpoint at {run_dir / CHECKPOINT}{stopped}")
        return run_dir
    if overwrite:
        events = sorted(p.name for p in run_dir.glob("events.out.tfevents.*"))  # --tensorboard's
        for name in (*RUN_FILES, *events):
            try:
                (run_dir / name).unlink(missing_ok=True)
            except OSError as e:
                raise FPTError(f"--overwrite cannot delete {run_dir / name}: {e.strerror or e}") from None
        return run_dir
    if (run_dir / CHECKPOINT).exists() or (run_dir / RESULT).exists():
        raise FPTError(f"run directory {run_dir} already holds a run; pass --resume to continue it, --overwrite "
                       f"to start it over, or --run-dir for a new one (nothing was overwritten)")
    if (run_dir / METRICS).exists():
        raise FPTError(f"run directory {run_dir} already holds a run that stopped before its first checkpoint "
                       f"({METRICS} only); {START_OVER}")
    return run_dir


def resume_point(cfg: TrainConfig, run_dir: Path) -> tuple[dict, TrainConfig]:
    """(the run's checkpoint, `cfg` at the precision the run resolved when it started); one line when the
    checkpoint cannot be read or the config differs from the run's (`_check_resumable`)."""
    ckpt = _load_checkpoint(run_dir)
    if cfg.precision == "auto":
        cfg = cfg.replace(precision=ckpt["config"].get("precision", "auto"))
    _check_resumable(ckpt["config"], cfg)
    return ckpt, cfg


def _load_checkpoint(run_dir: Path) -> dict:
    """The run's checkpoint; one line when it is missing here, unreadable, or not fpt's."""
    path = run_dir / CHECKPOINT
    if not path.exists():  # rank 0 found it: this process runs on another machine
        raise FPTError(f"cannot read {path}: processes on several machines need --run-dir on shared storage")
    return read_checkpoint(path, CHECKPOINT_KEYS, prefix="cannot resume: ", suffix=f"; {START_OVER}")


def _check_resumable(saved: dict, cfg: TrainConfig) -> None:
    """A resumed run continues the saved one: the same config, but for keys that change nothing already
    computed (RESUMABLE_CHANGES); `steps` only grows, and stays fixed under a decaying learning rate."""
    now = cfg.to_dict()
    # a decaying learning rate is scheduled over `steps`: changing it would change the rates already used
    free = RESUMABLE_CHANGES - ({"steps"} if now["lr_schedule"] != "constant" else set())
    # saved.get(k, default): a checkpoint written before a key existed had that key's default
    defaults = TrainConfig().to_dict()
    was = {k: saved.get(k, defaults.get(k)) for k in now}
    changed = sorted(k for k in now if k not in free and was[k] != now[k]
                     and not (k == "precision" and now[k] == "auto"))  # auto: whatever the run resolved
    if changed:
        diffs = "; ".join(f"{k} {now[k]!r} here, {was[k]!r} in the run" for k in changed)
        raise FPTError(f"cannot resume: the config differs from the checkpoint's: {diffs} (drop those flags: "
                       f"--resume reads the run's config.yaml)")
    if now["steps"] < was["steps"]:
        raise FPTError(f"cannot resume: steps {now['steps']} is below the run's {was['steps']} (steps can only grow)")


def truncate_metrics(path: Path, step: int) -> None:
    """Drop records written after the checkpoint we resume from (a kill between the two), and a torn last
    line (a kill or a full disk in the middle of writing it)."""
    if not path.exists():
        return
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    keep = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
            record_step = record["step"]
        except (ValueError, KeyError, TypeError):
            if i == len(lines) - 1:
                break  # torn: the record of an evaluation the checkpoint does not cover anyway
            raise FPTError(f"cannot resume: {path} line {i + 1} is not a metrics record; {START_OVER}") from None
        if record_step <= step:
            keep.append(line)
    write_text_atomic(path, "".join(line + "\n" for line in keep))


def write_failure(e: Exception, run_dir: Path, step: int) -> str:
    """One line for a write that failed mid-run (disk full, quota), saying how to go on."""
    what = str(e) if isinstance(e, WriteFailed) else f"cannot write {e.filename or run_dir}: {e.strerror or e}"
    if (run_dir / CHECKPOINT).exists():
        return f"{what}; the run stopped at step {step}, its last checkpoint is intact: make room, then --resume"
    return f"{what}; the run stopped at step {step} before its first checkpoint: make room, then {START_OVER}"


def read_metrics(path: Path) -> list[dict]:
    """A run's metrics.jsonl records; a line a killed run left cut short is skipped."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
