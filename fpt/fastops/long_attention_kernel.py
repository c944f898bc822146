"""Long attention: attention with hash dropout for long sequences in tiles, on the CPU, never holding a T x T matrix.

Torch's fused SDPA kernel has no dropout path on the CPU, so with attention dropout the eager math wrote and read
the (B, H, T, T) scores, probabilities and mask several times a step: at 1024 tokens the step was bound by memory
(docs/performance.md). fpt/csrc/long_attention.c is flash attention for the CPU (online softmax over blocks of
keys, the backward recomputing each tile from the saved row statistics) with fpt's hash dropout recomputed inside
each tile: the same mask as the eager path's `seeded_dropout` of the (B, H, T, T) probabilities, for the same seed.
fp32 on CPUs with AVX-512, bf16 on those with AVX512-BF16; elsewhere the eager path runs.
"""
from __future__ import annotations

from typing import Optional

import torch

from fpt.fastops import native
from fpt.fastops.custom_ops import fused_op
from fpt.fastops.dropout import draw_seed, drop_threshold, dropout_seed
from fpt.fastops.switches import SWITCHES

# From this many tokens (bf16 up to 256 tokens in multiples of 16 takes short attention first). Forward and
# backward against the eager math, 2-core Zen 4, dropout 0.1: fp32 x 12 heads of 32, 256 tokens 124 / 298 ms
# (batch 32), 64 tokens 9 / 11 ms; bf16, 200 tokens 54 / 52 ms.
LONG_ATTENTION_MIN_TOKENS = 128
# Heads up to this wide: at 256 (Gemma 3 270M) the kernel and the eager math were level (88 ms, bf16, 1024 tokens)
LONG_ATTENTION_MAX_HEAD_DIM = 128
_SUFFIX = {torch.float32: "f32", torch.bfloat16: "bf16"}


def long_attention_kernels(dtype: torch.dtype = torch.float32):
    """fpt/csrc/long_attention.c for operands of `dtype`, or None (no build, a CPU without AVX-512, or bf16
    on one without AVX512-BF16)."""
    lib = native.kernels("long_attention")
    if lib is None or dtype not in _SUFFIX:
        return None
    return lib if getattr(lib, f"fpt_long_attention_{_SUFFIX[dtype]}_ok")() else None


@torch.compiler.assume_constant_result  # traced as its value: no graph break at the build and ctypes call
def _available_f32() -> bool:
    return long_attention_kernels(torch.float32) is not None


@torch.compiler.assume_constant_result
def _available_bf16() -> bool:
    return long_attention_kernels(torch.bfloat16) is not None


def long_attention_available(dtype: torch.dtype = torch.bfloat16) -> bool:
    """Whether this host has a build of the tiled kernel for `dtype` (training takes it in bf16)."""
    return SWITCHES.short_kernel and dtype in _SUFFIX and (
        _available_bf16() if dtype == torch.bfloat16 else _available_f32())


def long_attention_fits(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None) -> bool:
    """Whether `long_attention` takes these (B, H, T, d) operands: fp32 or bf16 on the CPU, as many queries as
    keys (T >= LONG_ATTENTION_MIN_TOKENS), d a multiple of 16 up to LONG_ATTENTION_MAX_HEAD_DIM, a boolean
    (B or 1, 1, T, T) mask or none, and a build of the kernel for this dtype."""
    t, d = query.shape[2:]
    return (query.device.type == "cpu" and query.dtype == key.dtype == value.dtype and query.dtype in _SUFFIX
            and key.shape == value.shape == query.shape and t >= LONG_ATTENTION_MIN_TOKENS and d % 16 == 0
            and d <= LONG_ATTENTION_MAX_HEAD_DIM and SWITCHES.short_kernel
            and (attention_mask is None or (attention_mask.dtype == torch.bool and attention_mask.dim() == 4
                                            and attention_mask.shape[0] in (1, query.shape[0])
                                            and attention_mask.shape[1:] in ((1, t, t), (1, 1, t))))
            and (_available_bf16() if query.dtype == torch.bfloat16 else _available_f32()))


def _heads_args(*tensors: torch.Tensor) -> list[int]:
    """Each (B, H, T, d) operand as the kernel takes it: pointer, batch, head and token strides."""
    args = []
    for x in tensors:
        args += [x.data_ptr(), x.stride(0), x.stride(1), x.stride(2)]
    return args


def _mask_args(mask: torch.Tensor | None) -> tuple:
    """A (B, T, T) boolean mask as the kernel reads it, bytes at b msb + i msq + j: (pointer, msb, msq)."""
    if mask is None:
        return None, 0, 0
    return mask.data_ptr(), mask.stride(0) if mask.shape[0] > 1 else 0, mask.stride(1) if mask.shape[1] > 1 else 0


def _unit_last_stride(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _dropout_args(seed: int, p: float) -> tuple[int, int, float]:
    """(seed, threshold, output scale) for the kernels; no dropout is threshold 0 (every element kept)."""
    return (seed % 2**64, drop_threshold(p), 1.0 / (1.0 - p)) if p > 0.0 else (0, 0, 1.0)


def long_attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
                           seed: torch.Tensor, scale: float, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (B, T, H, d), each query row's softmax max and 1 / sum (B, H, T, 2) fp32, saved for the backward);
    mask: (B or 1, T, T) boolean with unit last stride, or None; `seed`: an int or a 0-d tensor."""
    q, k, v = (_unit_last_stride(x) for x in (q, k, v))
    b, h, t, d = q.shape
    out = torch.empty(b, t, h, d, dtype=q.dtype)
    stats = torch.empty(b, h, t, 2, dtype=torch.float32)
    fwd = getattr(long_attention_kernels(q.dtype), f"fpt_long_attention_fwd_{_SUFFIX[q.dtype]}")
    fwd(*_heads_args(q, k, v), *_mask_args(mask), b, h, t, d, scale, *_dropout_args(int(seed), p), out.data_ptr(),
        stats.data_ptr(), torch.get_num_threads())
    return out, stats


def long_attention_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
                            out: torch.Tensor, stats: torch.Tensor, grad: torch.Tensor, seed: torch.Tensor,
                            scale: float, p: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients of q, k, v from the output's, as (B, T, H, d) tensors (transposed, the (B, H, T, d) ones)."""
    q, k, v = (_unit_last_stride(x) for x in (q, k, v))
    grad = grad.to(q.dtype).contiguous()
    b, h, t, d = q.shape
    grads = [torch.empty(b, t, h, d, dtype=q.dtype) for _ in range(3)]
    bwd = getattr(long_attention_kernels(q.dtype), f"fpt_long_attention_bwd_{_SUFFIX[q.dtype]}")
    bwd(*_heads_args(q, k, v), *_mask_args(mask), out.data_ptr(), grad.data_ptr(), stats.data_ptr(), b, h, t, d,
        scale, *_dropout_args(int(seed), p), *(g.data_ptr() for g in grads), t * h * d, h * d, torch.get_num_threads())
    return tuple(grads)


def _fake_forward(q, k, v, mask, seed, scale, p):
    b, h, t, d = q.shape
    return q.new_empty(b, t, h, d), q.new_empty(b, h, t, 2, dtype=torch.float32)


def _fake_grads(q, k, v, mask, out, stats, grad, seed, scale, p):
    b, h, t, d = q.shape
    return tuple(q.new_empty(b, t, h, d) for _ in range(3))


def _gradients(backward, saved, grad_out, grad_stats=None):
    grads = backward(*saved[:6], grad_out, *saved[6:])  # q, k, v, mask, out, stats, the output's gradient, seed, scale, p
    return (*(g.transpose(1, 2) for g in grads), None, None, None, None)


LONG_ATTENTION = fused_op(
    "long_attention", long_attention_forward, _fake_forward,
    saved=lambda inputs, outputs: (*inputs[:4], *outputs, *inputs[4:]),  # q, k, v, mask, out, stats, seed, scale, p
    gradients=_gradients, backward=long_attention_backward, backward_fake=_fake_grads)


def long_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   attention_mask: torch.Tensor | None, scaling: float, dropout: float) -> torch.Tensor:
    """softmax(q k^T scaling, masked) with hash dropout at `dropout`, times v: (B, T, H, d), for operands
    that `long_attention_fits`; attention_mask (B or 1, 1, T, T) boolean, True where a query may look."""
    b, _, t, _ = query.shape
    mask = None
    if attention_mask is not None:  # (B or 1, T, T), a view: a key padding mask broadcast over queries stays one row
        mask = attention_mask[:, 0]
        if mask.stride(-1) != 1:
            mask = mask.contiguous()
    if torch.compiler.is_compiling():
        seed = dropout_seed(query) if dropout > 0.0 else torch.zeros((), dtype=torch.int64)
        return LONG_ATTENTION.op(query, key, value, mask, seed, scaling, dropout)[0]
    return LONG_ATTENTION.eager.apply(query, key, value, mask, draw_seed() if dropout > 0.0 else 0, scaling,
                                      dropout)[0]
