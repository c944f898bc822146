"""The measuring tools of `fpt bench`: the device's matmul peak (the denominator of MFU), FLOPs counted by
torch's dispatcher, peak memory, median step time, evaluation throughput, and a fresh process per loop."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from dataclasses import dataclass

import torch

from fpt.run.experiment import Experiment


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory of a block: the CUDA allocator's peak on a GPU; on the CPU the process's peak RSS
    (`ru_maxrss`), which is the loop's own because `run_bench` gives each loop a fresh process."""

    def __init__(self, device: torch.device):
        self.device, self.peak_bytes = device, 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            import resource

            self.peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        return False


def matmul_peak_flops(device: torch.device, dtype: torch.dtype, *, seconds: float = 1.0) -> float:
    """Dense (n x n) @ (n x n) FLOP/s, best of a few sizes: the device's achievable peak."""
    best = 0.0
    for n in ((1024, 2048) if device.type == "cpu" else (4096, 8192)):
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        torch.mm(a, b)  # warm-up: kernels chosen, caches filled
        sync(device)
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 2:
            torch.mm(a, b)
            reps += 1
            sync(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - start))
    return best


@functools.cache  # registered once per process
def _count_cpu_sdpa() -> None:
    """Teach torch's FLOP counter the CPU flash-attention kernel (it knows only the GPU ones), with the
    formulas it uses for those: without this a step on fpt's CPU attention at >= 512 keys would leave
    out its attention FLOPs and understate MFU."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten

    @fc.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu, get_raw=True)
    def _forward(query, key, value, *args, out_val=None, **kwargs) -> int:
        return fc.sdpa_flop_count(query.shape, key.shape, value.shape)

    @fc.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward, get_raw=True)
    def _backward(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
        return fc.sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)


def count_flops(fn) -> int:
    """FLOPs (multiply-add = 2) that `fn()` runs, as counted by torch's dispatcher (fpt's short-attention
    kernel as the eager math it replaces, whose matmuls the dispatcher sees)."""
    from torch.utils.flop_counter import FlopCounterMode

    from fpt import fastops

    _count_cpu_sdpa()
    with FlopCounterMode(display=False) as counter, fastops.eager_math_for_short_attention():
        fn()
    return counter.get_total_flops()


@dataclass
class LoopFigures:
    name: str
    precision: str
    train_steps_per_s: float
    train_tokens_per_s: float
    eval_tokens_per_s: float
    peak_memory_mb: float
    flops_per_step: int
    achieved_tflops: float
    mfu: float  # achieved FLOP/s over the measured matmul peak of the same dtype
    compiled: bool = False  # the step under torch.compile (`compile: true`)
    requested: str | None = None  # the precision asked for (auto, fp32, bf16); `precision` is what ran

    @property
    def label(self) -> str:
        """The variant, as `--precisions` names it: fp32, bf16, bf16+compile; auto as what it picked
        (auto=bf16+compile)."""
        name = self.precision if self.requested in (None, self.precision) else f"{self.requested}={self.precision}"
        return name + ("+compile" if self.compiled else "")

    def row(self) -> dict:
        return dataclasses.asdict(self)


def median_seconds(step, n: int, device: torch.device) -> float:
    """Seconds per call of `step`, median of n calls (a slow outlier does not count)."""
    times = []
    for _ in range(n):
        sync(device)
        t = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def measure_loop(name: str, precision: str, exp: Experiment, step, *, tokens: int, steps: int, warmup: int,
             peak: float, evaluate, compiled: bool = False) -> LoopFigures:
    """Count one step's FLOPs, warm up, time `steps` steps and `evaluate`, under one peak-memory watch."""
    exp.model.train()
    with PeakMemory(exp.device) as mem:
        # NOTE: FLOPs are counted on an eager step, first: the same math, and no dispatch mode running over
        # a compiled (or CUDA-graph) step between the warm-up and the timed steps.
        with torch.compiler.set_stance("force_eager"):
            flops = count_flops(step)
        for _ in range(warmup):
            step()
        s_per_step = median_seconds(step, steps, exp.device)
        eval_tps = evaluate()
    return LoopFigures(name, precision, 1 / s_per_step, tokens / s_per_step, eval_tps,
                       mem.peak_bytes / 2**20, flops, flops / s_per_step / 1e12, flops / s_per_step / peak, compiled)


def eval_tokens_per_s(exp: Experiment, n_batches: int, *, graph: bool, batch_size: int | None = None) -> float:
    """Forward passes over the first `n_batches` test batches, as `evaluate` runs them (or, with
    `graph`, the paper's way: eval mode, but the autograd graph still built)."""
    cfg = exp.cfg
    batches = []
    for batch in exp.data.eval_batches("test", batch_size or cfg.eval_batch_size):
        batches.append(batch)
        if len(batches) >= n_batches:
            break
    tokens = sum(b.x.shape[0] * b.x.shape[1] for b in batches)
    exp.model.eval()
    ctx = contextlib.nullcontext if graph else torch.inference_mode
    autocast = exp.autocast()

    def run():
        with ctx(), autocast:
            for b in batches:
                b = b.to(exp.device)
                exp.model(b.x, b.lengths).float().argmax(-1)

    run()  # warm-up
    seconds = median_seconds(run, 2, exp.device)
    exp.model.train()
    return tokens / seconds


def in_fresh_process(fn, *args, **kwargs):
    """Run one loop's measurement in a fresh process on the CPU, so its peak RSS is its own (the
    CPU has no allocator statistics, and freed memory is not returned to the OS between loops)."""
    from fpt.core.host import pick_device

    if pick_device(args[0].device).type != "cpu":
        return fn(*args, **kwargs)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                             initializer=torch.set_num_threads, initargs=(torch.get_num_threads(),)) as pool:
        return pool.submit(fn, *args, **kwargs).result()
