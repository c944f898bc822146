"""Short attention: bf16 attention of up to 256 tokens in one C pass per (batch, head) on the CPU.

fpt/csrc/short_attention.c (AVX512-BF16) computes scores, softmax, hash dropout and the product with the
values in the core's cache, and the backward likewise: at MNIST's 64 tokens torch's batched matmuls of
64 x 64 x 32 ran at half the matmul peak, with a pass over memory between each op. MiniLM, bf16,
32 x 12 heads x 64 tokens, forward and backward: 7.7 -> 4.5 ms a layer (docs/performance.md).
"""
from __future__ import annotations

from typing import Optional

import torch

from fpt.fastops import native
from fpt.fastops.custom_ops import fused_op
from fpt.fastops.dropout import draw_seed, drop_threshold, dropout_seed
from fpt.fastops.switches import SWITCHES

# Up to this many tokens: the (T, T) scores of a head then stay in the core's cache.
SHORT_ATTENTION_MAX_TOKENS = 256


def short_attention_kernels():
    """fpt/csrc/short_attention.c, or None (no build, or a CPU without AVX512-BF16)."""
    lib = native.kernels("short_attention")
    return lib if lib is not None and lib.fpt_short_attention_ok() else None


@torch.compiler.assume_constant_result  # traced as its value: no graph break at the build and ctypes call
def _short_attention_available() -> bool:
    return short_attention_kernels() is not None


def short_attention_fits(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: torch.Tensor | None) -> bool:
    """Whether `short_attention` takes these (B, H, T, d) operands: bf16 on the CPU, as many queries as keys
    (T), T and d multiples of 16, T <= SHORT_ATTENTION_MAX_TOKENS, a boolean mask or none."""
    return (query.device.type == "cpu" and query.dtype == key.dtype == value.dtype == torch.bfloat16
            and key.shape == value.shape == query.shape and short_attention_takes(*query.shape[2:], attention_mask))


def short_attention_takes(t: int, d: int, attention_mask: torch.Tensor | None) -> bool:
    """T tokens of heads d wide, with this mask: the kernel's limits (the operands aside)."""
    return (t % 16 == 0 and d % 16 == 0 and t <= SHORT_ATTENTION_MAX_TOKENS and SWITCHES.short_kernel
            and (attention_mask is None or (attention_mask.dtype == torch.bool and attention_mask.dim() == 4
                                            and attention_mask.shape[1] == 1))
            and _short_attention_available())


def _heads_args(*tensors: torch.Tensor) -> list[int]:
    """Each (B, H, T, d) operand as the kernel takes it: pointer, batch, head and token strides."""
    args = []
    for x in tensors:
        args += [x.data_ptr(), x.stride(0), x.stride(1), x.stride(2)]
    return args


def _unit_last_stride(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _dropout_args(seed: int, p: float) -> tuple[int, int, float]:
    """(seed, threshold, output scale) for the kernels; no dropout is threshold 0 (every element kept)."""
    return (seed % 2**64, drop_threshold(p), 1.0 / (1.0 - p)) if p > 0.0 else (0, 0, 1.0)


def short_attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
                            seed: torch.Tensor, scale: float, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (B, T, H, d), the softmax (B, H, T, T), saved for the backward); mask: (B, T, T) uint8 or None;
    `seed`: an int or a 0-d tensor."""
    q, k, v = (_unit_last_stride(x) for x in (q, k, v))
    b, h, t, d = q.shape
    out = torch.empty(b, t, h, d, dtype=torch.bfloat16)
    probs = torch.empty(b, h, t, t, dtype=torch.bfloat16)
    short_attention_kernels().fpt_short_attention_fwd(
        *_heads_args(q, k, v), None if mask is None else mask.data_ptr(), b, h, t, d, scale,
        *_dropout_args(int(seed), p), probs.data_ptr(), out.data_ptr(), torch.get_num_threads())
    return out, probs


def short_attention_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, probs: torch.Tensor,
                             grad: torch.Tensor, seed: int, scale: float, p: float,
                             fused: torch.Tensor | None = None) -> list[torch.Tensor]:
    """The gradients of q, k, v from the output's, as (B, T, H, d) tensors (transposed, the (B, H, T, d) ones);
    with `fused`, a contiguous (B, T, 3, H, d) tensor, written into its thirds (returned as views)."""
    q, k, v = (_unit_last_stride(x) for x in (q, k, v))
    grad = grad.to(torch.bfloat16).contiguous()
    b, h, t, d = q.shape
    if fused is None:
        grads, strides = [torch.empty(b, t, h, d, dtype=torch.bfloat16) for _ in range(3)], (t * h * d, h * d)
    else:
        grads, strides = list(fused.unbind(2)), fused.stride()[:2]
    short_attention_kernels().fpt_short_attention_bwd(
        *_heads_args(q, k, v), probs.data_ptr(), grad.data_ptr(), b, h, t, d, scale, *_dropout_args(int(seed), p),
        *(g.data_ptr() for g in grads), *strides, torch.get_num_threads())
    return grads


def _short_attention_grads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, probs: torch.Tensor,
                           grad: torch.Tensor, seed: torch.Tensor, scale: float,
                           p: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(short_attention_backward(q, k, v, probs, grad, seed, scale, p))  # (B, T, H, d) each


def _fake_forward(q, k, v, mask, seed, scale, p):
    b, h, t, d = q.shape
    return q.new_empty(b, t, h, d), q.new_empty(b, h, t, t)


def _fake_grads(q, k, v, probs, grad, seed, scale, p):
    b, h, t, d = q.shape
    return tuple(q.new_empty(b, t, h, d) for _ in range(3))


def _gradients(backward, saved, grad_out, grad_probs=None):
    grads = backward(*saved[:4], grad_out, *saved[4:])  # q, k, v, probs, the output's gradient, seed, scale, p
    return (*(g.transpose(1, 2) for g in grads), None, None, None, None)


SHORT_ATTENTION = fused_op(
    "short_attention", short_attention_forward, _fake_forward,
    saved=lambda inputs, outputs: (*inputs[:3], outputs[1], *inputs[4:]),  # q, k, v, probs, seed, scale, p
    gradients=_gradients, backward=_short_attention_grads, backward_fake=_fake_grads)


def short_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, scaling: float, dropout: float) -> torch.Tensor:
    """softmax(q k^T scaling, masked) with hash dropout at `dropout`, times v: (B, T, H, d), for operands
    that `short_attention_fits`; attention_mask (B or 1, 1, T, T) boolean, True where a query may look."""
    b, _, t, _ = query.shape
    mask = mask_bytes(attention_mask, b, t)
    if torch.compiler.is_compiling():
        seed = dropout_seed(query) if dropout > 0.0 else torch.zeros((), dtype=torch.int64)
        return SHORT_ATTENTION.op(query, key, value, mask, seed, scaling, dropout)[0]
    return SHORT_ATTENTION.eager.apply(query, key, value, mask, draw_seed() if dropout > 0.0 else 0, scaling,
                                       dropout)[0]


def mask_bytes(attention_mask: torch.Tensor | None, b: int, t: int) -> torch.Tensor | None:
    """A boolean (B or 1, 1, T, T) mask as the kernel reads it: (B, T, T) bytes, or None."""
    return None if attention_mask is None else attention_mask.expand(b, 1, t, t)[:, 0].to(torch.uint8).contiguous()
