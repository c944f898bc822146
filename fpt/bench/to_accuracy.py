"""`fpt bench --time-to-accuracy`: both loops trained with the same recipe (steps, learning-rate schedule,
batch) until the test accuracy reaches a target: the wall time to an accuracy, not only a step rate.

fpt's side is `fpt train` itself (`fpt.run.loop.run` in a scratch run directory, its validation and
checkpoints included), with a hook that tests after each evaluation and ends the run at the target. The
reference side is the paper's loop (fpt/bench/loops.py), tested its own way."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from fpt.bench.loops import build_reference
from fpt.bench.measure import in_fresh_process, sync
from fpt.core.config import TrainConfig
from fpt.core.errors import FPTError
from fpt.run.experiment import Experiment, build_experiment
from fpt.run.loop import run
from fpt.run.step import evaluate, loss_and_correct


def train_to_accuracy(cfg: TrainConfig, loop: str, target: float, log=print) -> dict:
    """Train `loop` ("fpt" or "reference") with `cfg`'s recipe, testing every `cfg.eval_every` steps, until
    the test accuracy reaches `target` or the steps run out. Wall seconds count from the first step and
    include the evaluations, each loop's own way."""
    curve: list[dict] = []

    def point(step: int, accuracy: float, seconds: float, precision: str) -> bool:
        curve.append({"step": step, "test_accuracy": accuracy, "seconds": round(seconds, 3)})
        log(f"{loop:<9} {precision:<4}  step {step:>6}  test {accuracy:.2%}  {seconds:7.0f} s")
        return accuracy >= target

    if loop == "fpt":
        precision = _fpt_to_accuracy(cfg, point)
    else:
        precision = _reference_to_accuracy(cfg, point)
    reached = curve[-1] if curve and curve[-1]["test_accuracy"] >= target else None
    return {"name": loop, "precision": precision, "target": target, "curve": curve,
            "reached": reached is not None,
            "seconds_to_target": reached["seconds"] if reached else None,
            "steps_to_target": reached["step"] if reached else None}


def _fpt_to_accuracy(cfg: TrainConfig, point) -> str:
    """`fpt train`'s run with a test after each evaluation; the hook's `True` ends the run."""

    def after_evaluation(exp: Experiment, record: dict) -> bool:
        started = time.perf_counter()
        accuracy = evaluate(exp, "test")["accuracy"]
        # record["elapsed_s"] counts from the first step, earlier hooks included; this hook's test is added
        return point(record["step"], accuracy, record["elapsed_s"] + time.perf_counter() - started,
                     exp.cfg.precision)

    exp = build_experiment(cfg)
    with tempfile.TemporaryDirectory(prefix="fpt-bench-") as run_dir:
        try:
            run(exp, Path(run_dir), progress=False, after_evaluation=after_evaluation)
        except FPTError as e:
            if "diverged" in str(e):
                raise FPTError(f"fpt's loop diverged: lower --lr or raise --grad-clip ({e})") from None
            raise
    return exp.cfg.precision  # resolved: fp32 or bf16


def _reference_to_accuracy(cfg: TrainConfig, point) -> str:
    exp, optimizer, reference_step, micro = build_reference(cfg)
    exp.model.train()
    start = time.perf_counter()
    for s in range(cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr_at(s)  # fpt's schedule: only the loop differs
        reference_step()
        if (s + 1) % cfg.eval_every == 0 or s + 1 == cfg.steps:
            sync(exp.device)
            if point(s + 1, _reference_test_accuracy(exp, micro), time.perf_counter() - start, "fp32"):
                break
    return "fp32"


def _reference_test_accuracy(exp: Experiment, micro: int) -> float:
    """The whole test split the paper's way: eval mode, fp32, micro-batches, the autograd graph built."""
    exp.model.eval()
    correct = total = 0
    for batch in exp.data.eval_batches("test", micro):
        batch = batch.to(exp.device)
        _, right = loss_and_correct(exp.model(batch.x, batch.lengths), batch.y)
        correct, total = correct + int(right), total + batch.y.numel()
    exp.model.train()
    return correct / max(total, 1)


def run_time_to_accuracy(cfg: TrainConfig, target: float, *, reference: bool = True, log=print) -> dict:
    """Both loops to `target` test accuracy, one after the other, each in a fresh process on the CPU."""
    if not 0 < target <= 1:
        raise FPTError(f"--time-to-accuracy is a test accuracy in (0, 1], got {target}")
    loops = [in_fresh_process(train_to_accuracy, cfg, "fpt", target)]
    if reference:
        loops.append(in_fresh_process(train_to_accuracy, cfg, "reference", target))
    for r in loops:
        what = f"{r['seconds_to_target']:.0f} s ({r['steps_to_target']} steps)" if r["reached"] else \
            f"not reached in {cfg.steps} steps (best {max(p['test_accuracy'] for p in r['curve']):.2%})"
        log(f"time to {target:.1%} test accuracy, {r['name']} {r['precision']}: {what}")
    out = {"task": cfg.task, "backbone": cfg.backbone, "batch_size": cfg.batch_size, "target": target,
           "steps": cfg.steps, "eval_every": cfg.eval_every, "loops": loops}
    if reference and all(r["reached"] for r in loops):
        out["speedup_to_target"] = round(loops[1]["seconds_to_target"] / max(loops[0]["seconds_to_target"], 1e-3), 2)
        log(f"speedup to {target:.1%}: {out['speedup_to_target']:.2f}x")
    return out

