"""The two loops `fpt bench` times, built for one config: fpt's (`fpt.run.step.train_step` on batches from
`TaskData.train_batch`, exactly what `fpt train` runs) and a reference loop built the way the paper's
published code is built (the Hugging Face model in fp32 with eager attention, a torch DataLoader of
per-sample items, micro-batches of 16 with gradient accumulation, evaluation with the autograd graph built).
The reference is kept apart from fpt's loop on purpose: it *is* the comparison."""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from fpt.bench.measure import LoopFigures, eval_tokens_per_s, measure_loop
from fpt.core.config import TrainConfig
from fpt.core.errors import FPTError
from fpt.core.host import keep_freed_cpu_memory
from fpt.run.experiment import Experiment, build_experiment
from fpt.run.step import loss_and_correct, make_optimizer, train_step

REFERENCE_MICRO_BATCH = 16  # the paper's code: batch 16, gradient accumulation to the global batch


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
    """fpt's loop timed at the precision `cfg` resolves to (auto: fpt/models/precision.py); MFU against its peak."""
    exp, _, step = build_fpt_loop(cfg)
    tokens = cfg.batch_size * exp.data.spec.seq_len
    precision = exp.cfg.precision  # resolved: fp32 or bf16
    fig = measure_loop("fpt", precision, exp, step, tokens=tokens, steps=steps, warmup=warmup, peak=peaks[precision],
                   evaluate=lambda: eval_tokens_per_s(exp, eval_batches, graph=False), compiled=cfg.compile)
    return dataclasses.replace(fig, requested=cfg.precision)


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
    return measure_loop("reference", "fp32", exp, step, tokens=tokens, steps=steps, warmup=warmup, peak=peak,
                    evaluate=lambda: eval_tokens_per_s(exp, n_eval, graph=True, batch_size=micro))
