"""`fpt bench`: how fast fpt trains, against the paper's loop and against the hardware.

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
reaches the target (`run_time_to_accuracy`): the wall time to an accuracy, not only a step rate.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from fpt.config import BENCH_VARIANTS, TrainConfig
from fpt.errors import FPTError
from fpt.tasks import Batch
from fpt.run.experiment import Experiment, build_experiment
from fpt.run.step import loss_and_correct, make_optimizer, train_step
from fpt.core.host import keep_freed_cpu_memory

REFERENCE_MICRO_BATCH = 16  # the paper's code: batch 16, gradient accumulation to the global batch


# ---------------------------------------------------------------------------------------------------
# measuring tools


def _sync(device: torch.device) -> None:
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
        _sync(device)
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 2:
            torch.mm(a, b)
            reps += 1
            _sync(device)
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


def _time(step, n: int, device: torch.device) -> float:
    """Seconds per call of `step`, median of n calls (a slow outlier does not count)."""
    times = []
    for _ in range(n):
        _sync(device)
        t = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


# ---------------------------------------------------------------------------------------------------
# fpt's loop


def start_fpt(cfg: TrainConfig) -> tuple[Experiment, torch.optim.Optimizer, torch.Generator]:
    """What `fpt train` starts from for `cfg`: (experiment, its optimizer, the generator of training batches)."""
    exp = build_experiment(cfg)
    if exp.device.type == "cpu":
        keep_freed_cpu_memory()  # as `fpt train` does (the reference loop, the paper's code, does not)
    return exp, make_optimizer(exp), torch.Generator().manual_seed(cfg.seed)


def build_fpt_loop(cfg: TrainConfig) -> tuple[Experiment, torch.optim.Optimizer, Callable[[], torch.Tensor]]:
    """fpt's loop for `cfg`: (experiment, optimizer, one training step returning its loss)."""
    exp, optimizer, gen = start_fpt(cfg)

    def step() -> torch.Tensor:
        batch = exp.data.train_batch(cfg.batch_size, gen).to(exp.device, non_blocking=True)
        return train_step(exp, optimizer, batch)[0]

    return exp, optimizer, step


def bench_fpt(cfg: TrainConfig, *, steps: int, warmup: int, eval_batches: int,
              peaks: dict[str, float]) -> LoopFigures:
    """fpt's loop timed at the precision `cfg` resolves to (auto: fpt/precision.py); MFU against its peak."""
    exp, _, step = build_fpt_loop(cfg)
    tokens = cfg.batch_size * exp.data.spec.seq_len
    precision = exp.cfg.precision  # resolved: fp32 or bf16
    fig = _measure("fpt", precision, exp, step, tokens=tokens, steps=steps, warmup=warmup, peak=peaks[precision],
                   evaluate=lambda: _eval_tokens_per_s(exp, eval_batches, graph=False), compiled=cfg.compile)
    return dataclasses.replace(fig, requested=cfg.precision)


def _measure(name: str, precision: str, exp: Experiment, step, *, tokens: int, steps: int, warmup: int,
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
        s_per_step = _time(step, steps, exp.device)
        eval_tps = evaluate()
    return LoopFigures(name, precision, 1 / s_per_step, tokens / s_per_step, eval_tps,
                       mem.peak_bytes / 2**20, flops, flops / s_per_step / 1e12, flops / s_per_step / peak, compiled)


def _eval_tokens_per_s(exp: Experiment, n_batches: int, *, graph: bool, batch_size: int | None = None) -> float:
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
    seconds = _time(run, 2, exp.device)
    exp.model.train()
    return tokens / seconds


# ---------------------------------------------------------------------------------------------------
# the reference loop: built the way the paper's published code is built


class PerSampleDataset(Dataset):
    """One example per `__getitem__`, transformed on its own (the torchvision-transform way)."""

    def __init__(self, exp: Experiment, seed: int):
        self.data, self.seed = exp.data, seed

    def __len__(self) -> int:
        return 1 << 30  # sampled with replacement, like fpt's loop

    def __getitem__(self, i: int):
        b = self.data.train_batch(1, torch.Generator().manual_seed(self.seed * 1_000_003 + i))
        length = b.lengths[0] if b.lengths is not None else torch.tensor(b.x.shape[1])
        return b.x[0], b.y[0], length


def _pad_collate(items):
    xs, ys, lengths = zip(*items)
    t = max(x.shape[0] for x in xs)
    x = torch.stack([F.pad(x, (0, 0) * (x.dim() - 1) + (0, t - x.shape[0])) for x in xs])
    return x, torch.stack(ys), torch.stack(lengths)


def build_reference(cfg: TrainConfig) -> tuple[Experiment, torch.optim.Optimizer, Callable[[], None], int]:
    """The paper's loop for `cfg`: (experiment, optimizer, one training step, micro-batch size)."""
    # the paper's code: the whole model in fp32 with transformers' eager attention, every block in full,
    # not compiled
    ref_cfg = dataclasses.replace(cfg, precision="fp32", attn_implementation="eager", cache_features=False,
                                  last_block_at_readout=False, compile=False,
                                  compile_mode="default")
    exp = build_experiment(ref_cfg)
    optimizer = torch.optim.Adam(exp.model.parameters(), lr=cfg.lr)  # the paper passes every parameter
    micro = min(REFERENCE_MICRO_BATCH, cfg.batch_size)
    if cfg.batch_size % micro:
        raise FPTError(f"the reference loop accumulates micro-batches of {micro}: --batch-size must be a multiple")
    accum = cfg.batch_size // micro
    loader = iter(DataLoader(PerSampleDataset(exp, cfg.seed), batch_size=micro, shuffle=False,
                             collate_fn=_pad_collate, num_workers=0))
    padded = exp.data.spec.padded

    def step():
        optimizer.zero_grad()
        for _ in range(accum):
            x, y, lengths = next(loader)
            x, y, lengths = x.to(exp.device), y.to(exp.device), lengths.to(exp.device)
            loss, _ = loss_and_correct(exp.model(x, lengths if padded else None), y)
            (loss / accum).backward()
        torch.nn.utils.clip_grad_norm_(exp.model.parameters(), cfg.grad_clip)
        optimizer.step()

    return exp, optimizer, step, micro


def bench_reference(cfg: TrainConfig, *, steps: int, warmup: int, eval_batches: int, peak: float) -> LoopFigures:
    exp, _, step, micro = build_reference(cfg)
    tokens = cfg.batch_size * exp.data.spec.seq_len
    n_eval = eval_batches * max(cfg.eval_batch_size // micro, 1)  # the same examples as fpt's eval batches
    return _measure("reference", "fp32", exp, step, tokens=tokens, steps=steps, warmup=warmup, peak=peak,
                    evaluate=lambda: _eval_tokens_per_s(exp, n_eval, graph=True, batch_size=micro))


# ---------------------------------------------------------------------------------------------------
# time to accuracy: both loops trained with the same recipe until the test accuracy reaches a target


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


def train_to_accuracy(cfg: TrainConfig, loop: str, target: float, log=print) -> dict:
    """Train `loop` ("fpt" or "reference") with `cfg`'s recipe (steps, learning-rate schedule, batch),
    testing every `cfg.eval_every` steps, until the test accuracy reaches `target` or the steps run out.
    Wall seconds count from the first step and include the evaluations, each loop's own way."""
    from fpt.run.step import evaluate, scheduled_step

    if loop == "fpt":  # `fpt train`'s steps: its optimizer, batch stream and schedule (fpt.run.step.scheduled_step)
        exp, optimizer, gen = start_fpt(cfg)

        def step(s: int):
            loss = scheduled_step(exp, optimizer, gen, s)[1]
            if not torch.isfinite(loss):
                raise FPTError(f"fpt's loop diverged (loss {loss.item()}): lower --lr or raise --grad-clip")

        def test_accuracy():
            return evaluate(exp, "test")["accuracy"]
        precision = exp.cfg.precision  # resolved
    else:
        exp, optimizer, reference_step, micro = build_reference(cfg)

        def step(s: int):
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr_at(s)  # fpt's schedule: only the loop differs
            reference_step()

        def test_accuracy():
            return _reference_test_accuracy(exp, micro)
        precision = "fp32"
    exp.model.train()
    curve, reached, start = [], None, time.perf_counter()
    for s in range(cfg.steps):
        step(s)
        if (s + 1) % cfg.eval_every == 0 or s + 1 == cfg.steps:
            _sync(exp.device)
            accuracy = test_accuracy()
            seconds = time.perf_counter() - start
            curve.append({"step": s + 1, "test_accuracy": accuracy, "seconds": round(seconds, 3)})
            log(f"{loop:<9} {precision:<4}  step {s + 1:>6}  test {accuracy:.2%}  {seconds:7.0f} s")
            if accuracy >= target:
                reached = curve[-1]
                break
    return {"name": loop, "precision": precision, "target": target, "curve": curve,
            "reached": reached is not None,
            "seconds_to_target": reached["seconds"] if reached else None,
            "steps_to_target": reached["step"] if reached else None}


def run_time_to_accuracy(cfg: TrainConfig, target: float, *, reference: bool = True, log=print) -> dict:
    """Both loops to `target` test accuracy, one after the other, each in a fresh process on the CPU."""
    if not 0 < target <= 1:
        raise FPTError(f"--time-to-accuracy is a test accuracy in (0, 1], got {target}")
    loops = [_isolated(train_to_accuracy, cfg, "fpt", target)]
    if reference:
        loops.append(_isolated(train_to_accuracy, cfg, "reference", target))
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


# ---------------------------------------------------------------------------------------------------
# the command's body


def _isolated(fn, *args, **kwargs):
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


def parse_variant(text: str) -> tuple[str, bool]:
    """'bf16+compile' -> ('bf16', True): a precision, and whether the step runs under torch.compile."""
    from fpt.config import PRECISIONS

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
        fig = _isolated(bench_fpt, variant, steps=steps, warmup=warmup, eval_batches=eval_batches, peaks=peaks)
        if precision == "auto":
            log(f"precision auto picked {fig.precision} on this device")
        loops.append(fig)
        log(_line(fig))
    if reference:
        ref = _isolated(bench_reference, cfg, steps=steps, warmup=warmup, eval_batches=eval_batches, peak=peaks["fp32"])
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
            f = _isolated(bench_fpt, c, steps=steps, warmup=warmup, eval_batches=1, peaks=peaks)
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
