"""`cpu_attention`: the attention of BERT, ViT, GPT-2 and Gemma 3 on the CPU (`attn_implementation: auto`,
registered with transformers as `fpt_cpu`).

The eager math with the scores kept in their own dtype (no fp32 round trip of the (B, H, T, T) matrix under
bf16), short attention's C kernel where it fits, long attention's tiled C kernel for longer sequences (attention
dropout included), and torch's fused SDPA kernel for long sequences without attention dropout that long attention
does not take (fp32, or no build of it) (docs/performance.md, "Attention on the CPU").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fpt.fastops.dropout import seeded_dropout
from fpt.fastops.long_attention_kernel import long_attention, long_attention_fits
from fpt.fastops.short_attention_kernel import short_attention, short_attention_fits
from fpt.fastops.switches import SWITCHES

FPT_CPU = "fpt_cpu"  # the attention implementation name registered with transformers (`cpu_attention`)

# At this many keys and more, torch's fused CPU kernel (flash attention, no T x T matrix) beats the
# eager path; below it the eager path wins (its backward is 1.1-1.5x faster at 64-256 tokens).
# Measured on the 2-core CPU, MiniLM, bf16 (docs/performance.md). The fused kernel has no dropout
# of its own, so steps with attention dropout take long attention's kernel, or the eager path without it.
SDPA_MIN_KEYS = 512
# ... and for heads of at most this width: the fused kernel saves passes over the (T, T) scores, whose
# cost against the matmuls' shrinks as heads widen. 1024 tokens, bf16, forward and backward, fused /
# eager ms: 115 / 331 at d = 32 (MiniLM), 203 / 361 at 64 (GPT-2), 173-233 / 238 at 128, 163-304 / 149-237
# at 256 (Gemma 3 270M, whose step took 10.8 s fused against 9.0 s eager).
SDPA_MAX_HEAD_DIM = 128


def cpu_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                  **kwargs):
    """BERT's, ViT's, GPT-2's and Gemma 3's attention (transformers' `eager_attention_forward`), for the CPU.

    q: (B, H, T, d); k, v: (B, H / g, T, d), g = `module.num_key_value_groups` (1 but for Gemma);
    `attention_mask` None or boolean (B, 1, Tq, Tk), True where a query may look (transformers' sdpa
    mask, registered for this implementation, sliding windows included; None also for a causal model
    without padding, whose module says `is_causal`). Only for architectures whose own
    eager attention is exactly this (Architecture.standard_eager). Returns (out (B, T, H, d), weights or
    None); the weights feed the attention-map hooks of fpt/paper/attention.py.
    """
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    dropout = dropout if module.training else 0.0
    # transformers' sdpa mask is None for a causal model without padding: causality is then ours to apply
    causal = attention_mask is None and getattr(module, "is_causal", False) and query.shape[2] > 1
    groups = getattr(module, "num_key_value_groups", 1)  # grouped-query attention (Gemma): heads share k, v
    if groups > 1:
        key, value = _repeat_heads(key, groups), _repeat_heads(value, groups)
    softcap = kwargs.get("softcap")  # Gemma's tanh cap on the scores (none in Gemma 3); not in the fused kernel
    sdpa_min_keys = SDPA_MIN_KEYS if SWITCHES.sdpa_min_keys is None else SWITCHES.sdpa_min_keys
    sdpa = (dropout == 0.0 and softcap is None and key.shape[-2] >= sdpa_min_keys
            and query.shape[-1] <= SDPA_MAX_HEAD_DIM and not SWITCHES.weights_wanted)
    # long attention's kernel: with dropout, and in bf16 without, ahead of the fused kernel (1024 tokens, bf16,
    # forward and backward: 199 against 328 ms); in fp32 without dropout the two are level and the fused one stays
    # NOTE: bf16 only: fp32 runs stay bit-identical to the eager math they always ran (the tiled online
    # softmax sums in another order); the kernel's fp32 build is tested against it to 1e-5
    tiled = (softcap is None and not SWITCHES.weights_wanted
             and (query.dtype == torch.bfloat16 or SWITCHES.long_attention_fp32)
             and long_attention_fits(query, key, value, attention_mask))
    if sdpa and not tiled:
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scaling,
                                             is_causal=causal)
        return out.transpose(1, 2).contiguous(), None
    if causal:  # (Tq, Tk), True on and below the diagonal (queries are the last Tq positions)
        tq, tk = query.shape[2], key.shape[2]
        attention_mask = torch.ones(tq, tk, dtype=torch.bool, device=query.device).tril(tk - tq)[None, None]
    if tiled:
        return long_attention(query, key, value, attention_mask, scaling, dropout), None
    if softcap is None and not SWITCHES.weights_wanted and short_attention_fits(query, key, value, attention_mask):
        return short_attention(query, key, value, attention_mask, scaling, dropout), None
    # NOTE: the scale goes on the queries and dropout's 1 / (1 - p) on the output, both (B, H, T, d), not on
    # the (B, H, T, T) scores, forward and backward: the same math (rounded at another point) with two
    # fewer passes over the largest tensor of the step at long lengths.
    weights = torch.matmul(query * scaling, key.transpose(2, 3))  # (B, H, T, d) x (B, H, d, T) -> (B, H, T, T)
    if softcap is not None:
        weights = torch.tanh(weights / softcap) * softcap
    if attention_mask is not None:
        weights = weights.masked_fill(~attention_mask, torch.finfo(weights.dtype).min)
    # NOTE: softmax in the scores' dtype: torch computes it in fp32 inside and rounds once, so under bf16
    # the result equals transformers' softmax(fp32).to(bf16) without the two (B, H, T, T) casts (or the
    # two of the backward); at 1024 tokens those casts were a third of the step.
    weights = F.softmax(weights, dim=-1)
    if dropout > 0.0:
        kept = seeded_dropout(weights, dropout, 1.0)
        out = torch.matmul(kept, value) * (1.0 / (1.0 - dropout))
    else:
        out = torch.matmul(weights, value)  # (B, H, T, d)
    out = out.transpose(1, 2).contiguous()  # (B, T, H, d)
    return out, weights


def _repeat_heads(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, Hkv, T, d) -> (B, Hkv * groups, T, d), each key/value head repeated for its query heads
    (transformers' `repeat_kv`)."""
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, groups, t, d).reshape(b, h * groups, t, d)


def register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(FPT_CPU, cpu_attention)
    # NOTE: transformers builds no mask at all for an attention name it has no mask function for, and
    # padding would then leak into every token; sdpa's boolean mask serves both paths above.
    AttentionMaskInterface.register(FPT_CPU, sdpa_mask)
