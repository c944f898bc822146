"""Hash dropout: torch's dropout distribution at a fraction of its cost on the CPU.

On the CPU the random generator, not the arithmetic, is what dropout costs: a MiniLM step on MNIST
(eager attention, bf16) takes 172 ms without dropout and about 250 ms with torch's dropout at 0.1,
most of the difference in drawing one random number per element (docs/performance.md).
`fast_dropout` draws the same distribution (each element kept with probability 1 - p, scaled by
1 / (1 - p)) from a counter-based hash of (seed, element index), one seed per call from torch's
generator: on the CPU one pass of C (fpt/csrc/hash_dropout.c) that draws, masks and scales, and a
backward that recomputes the mask rather than storing it. Results stay seeded and repeatable, and
differ from `nn.Dropout`'s only as two seeds differ.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from fpt.fastops import native
from fpt.fastops.custom_ops import fused_op, opaque_op
from fpt.fastops.swap import swap_modules

NATIVE_DTYPES = (torch.float32, torch.bfloat16)  # what fpt/csrc/hash_dropout.c reads and writes
# SplitMix64's constants as int64 (torch has no uint64 arithmetic): the hash of fpt/csrc/hash_dropout.c
_GOLDEN, _MIX1, _MIX2 = (c - 2**64 for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def _shr(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 words (torch's `>>` is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def drop_threshold(p: float) -> int:
    """An element is dropped when its 32 random bits are below this: probability p to within 2^-32."""
    return min(round(p * 2**32), 2**32 - 1)


def hash_keep_mask(shape: torch.Size, seed: int, p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """Which elements hash dropout keeps: element i (row-major) iff the high 32 bits of SplitMix64's
    output function at seed + i * golden are >= `drop_threshold(p)`.

    The torch form of fpt/csrc/hash_dropout.c: its fallback (no compiler, other dtypes and devices),
    and the reference its tests compare against bit for bit.
    """
    seed %= 2**64
    seed -= 2**64 if seed >= 2**63 else 0  # the same 64 bits as an int64
    z = torch.arange(math.prod(shape), dtype=torch.int64, device=device) * _GOLDEN + seed
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return _shr(z ^ _shr(z, 31), 32).view(shape) >= drop_threshold(p)


def dropout_forward(x: torch.Tensor, seed: torch.Tensor, p: float, scale: float) -> torch.Tensor:
    """`torch.where(hash_keep_mask(x.shape, seed, p), x * scale, 0)`, contiguous; on the CPU in fp32 and
    bf16 one pass of fpt/csrc/hash_dropout.c, elsewhere the torch form. `seed`: an int or a 0-d tensor."""
    seed = int(seed)
    lib = native.kernels("hash_dropout") if x.device.type == "cpu" and x.dtype in NATIVE_DTYPES else None
    if lib is None:
        return torch.where(hash_keep_mask(x.shape, seed, p, x.device), x * scale, 0.0).contiguous()
    kernel = lib.fpt_hash_dropout_bf16 if x.dtype == torch.bfloat16 else lib.fpt_hash_dropout_f32
    return run_hash_kernel(kernel, [x], x.dtype, seed, p, scale)


def run_hash_kernel(kernel, inputs: list[torch.Tensor], out_dtype: torch.dtype, seed: int, p: float,
                    scale: float) -> torch.Tensor:
    """One fpt/csrc/hash_dropout.c kernel over `inputs` (made contiguous) into a new tensor of their shape."""
    inputs = [t.contiguous() for t in inputs]
    out = torch.empty(inputs[0].shape, dtype=out_dtype)
    kernel(*(t.data_ptr() for t in inputs), out.data_ptr(), out.numel(), seed % 2**64, drop_threshold(p), scale,
           torch.get_num_threads())
    return out


def draw_seed() -> int:
    """One 63-bit draw from torch's CPU generator: `torch.manual_seed`, checkpoints and the ranks'
    dropout streams (fpt/run/distributed.py) decide every mask."""
    return int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))


def _seed_tensor(like: torch.Tensor) -> torch.Tensor:
    """`draw_seed` as a 0-d int64 tensor; `like` is the tensor dropped."""
    return torch.tensor(draw_seed(), dtype=torch.int64)


# The seed's op for torch.compile is tagged seeded: the compiled graph keeps one draw per dropout, in eager's
# order, and never re-runs it to save memory (the backward reads the seed the forward drew).
dropout_seed = opaque_op("dropout_seed", _seed_tensor, lambda like: torch.empty((), dtype=torch.int64),
                         tags=(torch.Tag.nondeterministic_seeded,))

# x -> the kept elements scaled; its backward: the same mask, recomputed from the seed, on the gradient
HASH_DROPOUT = fused_op(
    "hash_dropout", dropout_forward,
    fake=lambda x, seed, p, scale: torch.empty(x.shape, dtype=x.dtype, device=x.device),
    saved=lambda inputs, output: inputs[1:],  # seed, p, scale
    gradients=lambda backward, saved, grad: (backward(grad, *saved), None, None, None))
hash_dropout = HASH_DROPOUT.op  # fpt::hash_dropout(x, seed, p, scale)


def seeded_dropout(x: torch.Tensor, p: float, scale: float) -> torch.Tensor:
    """Hash dropout of `x` with a fresh seed: x * scale where kept, 0 where dropped (probability p)."""
    if torch.compiler.is_compiling():
        return hash_dropout(x, dropout_seed(x), p, scale)
    return HASH_DROPOUT.eager.apply(x, draw_seed(), p, scale)


def fast_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    if not training or p == 0.0:
        return x
    if p >= 1.0:
        return x * 0.0
    return seeded_dropout(x, p, 1.0 / (1.0 - p))


class FastDropout(nn.Dropout):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)


def use_fast_dropout(model: nn.Module) -> int:
    """Swap every `nn.Dropout` for `FastDropout` (same p, same train/eval switch); returns the count."""
    return swap_modules(model, lambda m: type(m) is nn.Dropout, lambda m: FastDropout(m.p))
