"""`fpt bench`: how fast fpt trains, against the paper's loop and against the hardware (the command's body;
measure.py the tools, loops.py the two loops, to_accuracy.py the time to an accuracy).

Three measurements, all in one process on one device:

1. The device's dense matmul peak (fp32 and bf16), timed here, the denominator of MFU.
2. fpt's own loop: `fpt.run.step.train_step` on batches from `TaskData.train_batch`, exactly what
   `fpt train` runs, in fp32 and in bf16; evaluation as `fpt.run.step.evaluate` does it.
3. A reference loop built the way the paper's published code is built: the Hugging Face model in
   fp32 with eager attention, a torch DataLoader of per-sample items, each batch moved to the device,
   micro-batches of 16 with gradient accumulation, evaluation with the autograd graph still built.

FLOPs per step are counted by `torch.utils.flop_counter.FlopCounterMode` on one real step, so they
include what autograd really runs: no weight gradients for frozen weights.

With `--time-to-accuracy`, both loops instead train with the same recipe until the test accuracy
reaches the target (fpt/bench/to_accuracy.py): the wall time to an accuracy, not only a step rate.
"""
from __future__ import annotations

import dataclasses

import torch

from fpt.bench.loops import bench_fpt, bench_reference
from fpt.bench.measure import LoopFigures, in_fresh_process, matmul_peak_flops
from fpt.bench.to_accuracy import run_time_to_accuracy, train_to_accuracy  # noqa: F401  (the command's API)
from fpt.core.config import BENCH_VARIANTS, TrainConfig
from fpt.core.errors import FPTError


def parse_variant(text: str) -> tuple[str, bool]:
    """'bf16+compile' -> ('bf16', True): a precision, and whether the step runs under torch.compile."""
    from fpt.core.config import PRECISIONS

    precision, plus, extra = text.partition("+")
    if precision not in PRECISIONS or (plus and extra != "compile"):
        raise FPTError(f"unknown bench variant {text!r}: a precision ({', '.join(PRECISIONS)}), optionally +compile")
    return precision, bool(plus)


def run_bench(cfg: TrainConfig, *, steps: int = 5, warmup: int = 2, eval_batches: int = 2,
              precisions: tuple[str, ...] = BENCH_VARIANTS, reference: bool = True,
              log=print) -> dict:
    """Every figure of `fpt bench` for one (task, backbone, batch, sequence length), as a dict.

    `precisions` are variants of fpt's loop (`parse_variant`); `compile: true` in `cfg` compiles them all.
    """
    from fpt.core.host import device_name, pick_device

    variants = [parse_variant(v) for v in precisions]  # every name checked before anything runs
    device = pick_device(cfg.device)
    if device.type == "cpu" and (cfg.compile or any(compiled for _, compiled in variants)):
        from fpt.run.experiment import missing_cpu_compiler

        if (missing := missing_cpu_compiler()) is not None:
            if cfg.compile or tuple(precisions) != BENCH_VARIANTS:  # asked for by name: an error, before any loop
                raise FPTError(f"{missing}: install one (apt install g++) or drop --compile and +compile")
            log(f"skipping the +compile rows: {missing}")  # the default rows run without one
            variants = [v for v in variants if not v[1]]
    torch.manual_seed(0)
    peaks = {p: matmul_peak_flops(device, torch.float32 if p == "fp32" else torch.bfloat16) for p in ("fp32", "bf16")}
    log(f"device: {device_name(device)}; dense matmul peak fp32 {peaks['fp32'] / 1e12:.3f} TFLOP/s, "
        f"bf16 {peaks['bf16'] / 1e12:.3f} TFLOP/s (measured now)")
    loops = []
    for precision, compiled in variants:
        variant = dataclasses.replace(cfg, precision=precision, compile=cfg.compile or compiled)
        fig = in_fresh_process(bench_fpt, variant, steps=steps, warmup=warmup, eval_batches=eval_batches, peaks=peaks)
        if precision == "auto":
            log(f"precision auto picked {fig.precision} on this device")
        loops.append(fig)
        log(_line(fig))
    if reference:
        ref = in_fresh_process(bench_reference, cfg, steps=steps, warmup=warmup, eval_batches=eval_batches, peak=peaks["fp32"])
        loops.append(ref)
        log(_line(ref))
    seq_len = build_experiment_spec(cfg).seq_len
    out = {"task": cfg.task, "backbone": cfg.backbone, "batch_size": cfg.batch_size, "seq_len": seq_len,
           "device": device_name(device), "threads": torch.get_num_threads(),
           "matmul_peak_tflops": {p: round(v / 1e12, 4) for p, v in peaks.items()},
           "loops": [f.row() for f in loops]}
    if reference:
        ref = loops[-1]
        out["speedup_train"] = {f.label: round(f.train_tokens_per_s / ref.train_tokens_per_s, 2)
                                for f in loops[:-1]}
        out["speedup_eval"] = {f.label: round(f.eval_tokens_per_s / ref.eval_tokens_per_s, 2)
                               for f in loops[:-1]}
        for p, r in out["speedup_train"].items():
            log(f"speedup over the reference loop ({p}): training {r:.2f}x, evaluation {out['speedup_eval'][p]:.2f}x")
    return out


def build_experiment_spec(cfg: TrainConfig):
    from fpt.tasks import task_from_config

    return task_from_config(cfg).spec


def _line(f: LoopFigures) -> str:
    return (f"{f.name:<9} {f.label:<12}  train {f.train_steps_per_s:7.2f} steps/s {f.train_tokens_per_s:10,.0f} tok/s  "
            f"eval {f.eval_tokens_per_s:10,.0f} tok/s  peak {f.peak_memory_mb:8,.0f} MB  "
            f"{f.flops_per_step / 1e9:8.1f} GFLOP/step  {f.achieved_tflops:.3f} TFLOP/s  MFU {f.mfu:6.1%}")


def run_scaling(cfg: TrainConfig, *, seq_lens: list[int], batch_sizes: list[int], steps: int = 3,
                warmup: int = 1, log=print) -> list[dict]:
    """fpt's training step over a grid of sequence lengths and batch sizes (synthetic inputs)."""
    from fpt.core.host import pick_device

    device = pick_device(cfg.device)
    peaks = {p: matmul_peak_flops(device, torch.float32 if p == "fp32" else torch.bfloat16) for p in ("fp32", "bf16")}
    rows = []
    for t in seq_lens:
        for b in batch_sizes:
            c = dataclasses.replace(cfg, task="synthetic", batch_size=b, patch_size=None,
                                    task_options={"seq_len": t, "token_dim": 16, "num_classes": 10,
                                                  "eval_examples": b})
            f = in_fresh_process(bench_fpt, c, steps=steps, warmup=warmup, eval_batches=1, peaks=peaks)
            rows.append({"seq_len": t, "batch_size": b, "precision": f.precision,
                         "ms_per_step": round(1000 / f.train_steps_per_s, 1),
                         "tokens_per_s": round(f.train_tokens_per_s), "flops_per_step": f.flops_per_step,
                         "gflop_per_step": round(f.flops_per_step / 1e9, 2),
                         "tflops": round(f.achieved_tflops, 3), "mfu": round(f.mfu, 4),
                         "peak_memory_mb": round(f.peak_memory_mb)})
            r = rows[-1]
            log(f"seq {t:>5}  batch {b:>3}  {r['ms_per_step']:9.1f} ms/step  {r['tokens_per_s']:>9,} tok/s  "
                f"{r['gflop_per_step']:8.1f} GFLOP/step  MFU {r['mfu']:.1%}")
    return rows
