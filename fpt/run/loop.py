"""The training loop of one process, top to bottom: own the run directory, read the checkpoint (--resume),
build, then `run`: optimizer and state (restored), the loop (validation and a checkpoint every eval_every
steps, the best-validation weights kept beside the last), test once on the best weights, the result.
Data-parallel training (fpt/run/distributed.py) runs these same functions with its own `OneProcess` hooks;
the loop never imports it (fpt/run/launch.py picks)."""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Callable

import torch

from fpt.run.checkpoint import rng_state, save_checkpoint, set_rng_state
from fpt.core.config import TrainConfig, save_yaml
from fpt.core.errors import FPTError
from fpt.models.model import count_parameters, summarize_counts
from fpt.run.experiment import Experiment, build_experiment, describe_precision
from fpt.run.files import (CHECKPOINT, METRICS, RESULT, START_OVER, TASK, prepare_run_dir, resume_point,
                           truncate_metrics, write_failure)
from fpt.run.progress import Progress
from fpt.run.result import describe_body, export_backbone, result_record, trained_groups
from fpt.run.step import ONE_PROCESS, OneProcess, evaluate, make_optimizer, scheduled_step
from fpt.run.tblog import ScalarLog
from fpt.core.files import WriteFailed, write_json_atomic
from fpt.core.host import device_name, keep_freed_cpu_memory


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = True) -> dict:
    """Train one run in this process to `cfg.steps` (or early stop) and return its result record.

    `resume` continues the run in `cfg.run_dir` from its checkpoint; `overwrite` deletes what the run
    directory holds and starts over. The run directory is locked for the whole run (fpt.core.files.hold_folder).
    """
    with contextlib.ExitStack() as held:  # the run directory's lock, released however we leave
        run_dir = prepare_run_dir(cfg, resume=resume, overwrite=overwrite, held=held)
        ckpt = None
        if resume:  # a corrupt checkpoint or a differing config fails before anything is built
            ckpt, cfg = resume_point(cfg, run_dir)
        exp = build_experiment(cfg)  # before any file is written: bad input leaves nothing behind
        return run(exp, run_dir, ckpt, progress=progress)


def run(exp: Experiment, run_dir: Path, ckpt: dict | None = None, *, progress: bool = True,
        processes: OneProcess = ONE_PROCESS,
        after_evaluation: Callable[[Experiment, dict], bool] | None = None) -> dict:
    """Train the built `exp` in `run_dir` (`ckpt`: the checkpoint a resumed run continues) and return the
    result record: optimizer and state, the loop (validating and checkpointing every eval_every steps, the
    best-validation weights kept beside the last), then test, once, on the best-validation weights.

    `after_evaluation(exp, record)` runs after each evaluation's checkpoint; `True` ends the run as an early
    stop (`fpt bench --time-to-accuracy` tests there and stops at its target)."""
    cfg, model, device = exp.cfg, exp.model, exp.device  # cfg's precision resolved (auto -> fp32 or bf16)
    if processes.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if device.type == "cpu":
        keep_freed_cpu_memory()
    optimizer = make_optimizer(exp)
    gen = torch.Generator().manual_seed(cfg.seed)  # draws training batches
    weights_sha = exp.weights_sha256()
    data_sha = exp.data_sha256()
    counts = summarize_counts(count_parameters(model))
    state = {"step": 0, "elapsed": 0.0, "best_val": -1.0, "best_step": 0, "last": None, "best": None,
             "run_loss": 0.0, "run_correct": 0, "run_targets": 0}
    best_weights = None  # the trainable tensors at the best validation accuracy so far (CPU copies)

    if ckpt is not None:
        if ckpt["weights_sha256"] != weights_sha:
            raise processes.error("cannot resume: the frozen backbone weights differ from the checkpoint's")
        if ckpt.get("data_sha256", data_sha) != data_sha:
            raise processes.error(f"cannot resume: the task's data differ from the data the run trained on "
                                  f"(data_sha256); restore them, or {START_OVER}")
        try:
            model.load_state_dict(ckpt["trainable"], strict=False)
            optimizer.load_state_dict(ckpt["optimizer"])
            set_rng_state(ckpt["rng"], gen)
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise processes.error(f"cannot resume: {run_dir / CHECKPOINT} does not fit this model "
                                  f"({type(e).__name__}); {START_OVER}") from None
        state.update({k: v for k, v in ckpt["state"].items() if k in state})
        best_weights = (ckpt.get("best") or {}).get("trainable")
        if processes.is_main:
            truncate_metrics(run_dir / METRICS, state["step"])
    processes.start_streams(cfg.seed, state["step"], (ckpt or {}).get("rank_rng"))
    if processes.is_main:
        save_yaml(cfg, run_dir / "config.yaml")
        if exp.data.encoding:  # a task file's vocabulary or classes and sizes, for `fpt predict`
            write_json_atomic(run_dir / TASK, exp.data.encoding)

    bar = Progress(cfg.steps, state["step"], progress and processes.is_main)
    bar.write(f"fpt: {cfg.task} on {describe_body(exp)}, training {','.join(trained_groups(counts))}: "
              f"{counts['trainable_params']:,} of {counts['total_params']:,} parameters "
              f"({counts['trainable_pct']:.3f}%) on {device_name(device)}{processes.describe()}, "
              f"{describe_precision(exp.precision_info)} -> {run_dir}")
    if exp.cfg.tensorboard and processes.is_main:
        # events after the checkpoint's step are dropped on a resume; the checkpoint's own record stays
        exp.tensorboard = exp.tensorboard or ScalarLog(run_dir, purge_step=state["step"] + 1)
    model.train()
    started = time.perf_counter() - state["elapsed"]
    status = "finished"
    try:
        while state["step"] < cfg.steps:
            batch, loss, correct = scheduled_step(exp, optimizer, gen, state["step"])
            if not torch.isfinite(loss):
                status = "diverged"
                break
            state["step"] += 1
            state["run_loss"] += loss.item() * batch.y.numel()
            state["run_correct"] += int(correct)
            state["run_targets"] += batch.y.numel()
            bar.update(1, loss=f"{loss.item():.4f}")
            if state["step"] % cfg.eval_every == 0 or state["step"] == cfg.steps:
                record = _evaluate_and_log(exp, state, run_dir, started, processes)
                if record["step"] == state["best_step"]:  # a new best: its weights are kept
                    best_weights = trainable_weights(model)
                bar.write(f"step {record['step']:>7}  loss {record['train_loss']:.4f}  "
                          f"train {record['train_accuracy']:.4f}  val {record['val_accuracy']:.4f}"
                          f"{'  (best)' if record['step'] == state['best_step'] else ''}  "
                          f"({record['elapsed_s']:.0f}s)")
                bar.progress_line(record)
                rank_rng = processes.stream_states()  # data-parallel: every process's dropout RNG
                if processes.is_main:  # the unwrapped model's names: resumable at any world size
                    save_checkpoint({"config": cfg.to_dict(), "weights_sha256": weights_sha, "data_sha256": data_sha,
                                     "trainable": trainable_weights(model),
                                     "best": {"step": state["best_step"], "trainable": best_weights},
                                     "optimizer": optimizer.state_dict(), "rng": rng_state(gen),
                                     "rank_rng": rank_rng, "state": dict(state)}, run_dir / CHECKPOINT)
                if cfg.early_stop is not None and (record["val_accuracy"] or 0) >= cfg.early_stop:
                    status = "early_stopped"
                    break
                if after_evaluation is not None and after_evaluation(exp, record):
                    status = "early_stopped"
                    break
    except (OSError, WriteFailed) as e:  # disk full, quota: metrics.jsonl or the checkpoint (rank 0 writes)
        raise FPTError(write_failure(e, run_dir, state["step"])) from None
    finally:
        bar.close()

    test = None
    if best_weights is not None:  # test, once, on the weights the run reports (the best validation step)
        last = trainable_weights(model)
        model.load_state_dict(best_weights, strict=False)
        test = evaluate(exp, "test", processes)
        model.load_state_dict(last, strict=False)
    result = result_record(exp, state, counts, weights_sha, data_sha, status, time.perf_counter() - started,
                     run_dir, test)
    if exp.tensorboard is not None:  # the run's hyperparameters beside its reported figures
        exp.tensorboard.write_hparams(cfg.to_dict(), {k: result[k] for k in ("test_accuracy", "best_val_accuracy",
                                                                             "train_accuracy_at_best")
                                                      if isinstance(result.get(k), (int, float))})
    if cfg.export_backbone and status != "diverged" and processes.is_main:
        result["exported_backbone"] = export_backbone(exp, cfg.export_backbone)
    if processes.is_main:
        try:
            write_json_atomic(run_dir / RESULT, result)
        except WriteFailed as e:
            raise FPTError(write_failure(e, run_dir, state["step"])) from None
    processes.barrier()  # every process returns (or raises) once the first has written the result
    if status == "diverged":
        good = (f"test accuracy {result['test_accuracy']:.4f} at its best validation step {state['best_step']}"
                if test is not None else "no evaluation before it")
        raise processes.error(f"run diverged at step {state['step'] + 1} (non-finite loss); {good}; "
                              f"recorded in {run_dir / RESULT}")
    return result


def trainable_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of the trainable tensors, under the eager model's names."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def _evaluate_and_log(exp: Experiment, state: dict, run_dir: Path, started: float, processes: OneProcess) -> dict:
    """Validation only (test is measured once, at the end): a task without a val split is scored on its
    training accuracy since the last evaluation, and its last weights are the ones reported."""
    val = evaluate(exp, "val", processes) if "val" in exp.data.splits else None
    # each process summed its own batches since the last evaluation
    loss_sum, right, count = processes.sum(state["run_loss"], state["run_correct"], state["run_targets"])
    state.update(run_loss=loss_sum, run_correct=round(right), run_targets=round(count))
    targets = max(state["run_targets"], 1)
    record = {"step": state["step"], "train_loss": state["run_loss"] / targets,
              "train_accuracy": state["run_correct"] / targets,
              "val_accuracy": val["accuracy"] if val else None, "val_loss": val["loss"] if val else None,
              "lr": exp.cfg.lr_at(max(state["step"] - 1, 0)),
              "elapsed_s": round(time.perf_counter() - started, 3)}
    state.update(run_loss=0.0, run_correct=0, run_targets=0, last=record, elapsed=record["elapsed_s"])
    if val is None or record["val_accuracy"] > state["best_val"]:
        state.update(best_val=record["val_accuracy"] if val else -1.0, best_step=record["step"], best=record)
    if processes.is_main:
        with open(run_dir / METRICS, "a") as f:
            f.write(json.dumps(record) + "\n")
        if exp.tensorboard is not None:  # the same scalars as TensorBoard events (fpt/run/tblog.py)
            exp.tensorboard.write(record)
    return record
