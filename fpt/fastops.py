"""Fast paths that keep the math: cheaper dropout and attention without needless passes (CPU), and
GPT-2's GELU as one kernel (every device).

On the CPU the random generator, not the arithmetic, is what dropout costs: a MiniLM step on MNIST
(eager attention, bf16) takes 172 ms without dropout and about 250 ms with torch's dropout at 0.1,
most of the difference in drawing one random number per element (docs/performance.md).
`fast_dropout` draws the same distribution (each element kept with probability 1 - p, scaled by
1 / (1 - p)) from 16 random bits per element: results stay seeded and repeatable, and differ from
`nn.Dropout`'s only as two seeds differ.

`cpu_attention` is the attention of BERT, ViT, GPT-2 and Gemma 3 (`attn_implementation: auto` on the CPU): the
eager math with the scores kept in their own dtype (no fp32 round trip of the (B, H, T, T) matrix
under bf16), and torch's fused SDPA kernel where it is faster: long sequences without attention
dropout (docs/performance.md, "Attention on the CPU").

`use_fused_gelu`: transformers writes GPT-2's `gelu_new` as eight elementwise ops, and bf16 autocast runs
its `pow` in fp32, so the whole (B, T, 4D) activation and its backward went through fp32 passes: 60% of
a bf16 GPT-2 step on an H200 (docs/performance.md, "GPU"). torch's tanh-approximate `F.gelu` is the same
function in one kernel, in the input's dtype.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FPT_CPU = "fpt_cpu"  # the attention implementation name registered with transformers (`cpu_attention`)


def random_words(count: int, device: torch.device) -> torch.Tensor:
    """`count` uniform random int64 words, decided by torch's generator (`torch.manual_seed`).

    On the CPU they come from numpy's SFC64, seeded by one draw from torch's generator: 1.8 ns a word
    on the 2-core CPU against 4.3 ns for torch's own CPU generator (mt19937). Seeding from torch keeps
    torch's state the one thing that decides the masks, so seeds, checkpoints and the ranks' dropout
    streams (fpt/distributed.py) work unchanged.
    """
    if device.type != "cpu":
        return torch.empty(count, dtype=torch.int64, device=device).random_(-2**63, 2**63 - 1)
    seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))
    return torch.from_numpy(np.random.SFC64(seed).random_raw(count).view(np.int64))


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """Bernoulli(1 - p) booleans from 16 random bits each, four per 64-bit draw.

    A CPU `torch.rand` costs one generator call per element; this takes one per four. p is rounded
    to a multiple of 1/65536 (0.1 -> 0.100006).
    """
    n = math.prod(shape)
    words = random_words((n + 3) // 4, device)
    lanes = words.view(torch.int16)[:n].view(shape)  # uniform over [-32768, 32767]
    return lanes >= -32768 + round(p * 65536)


# NOTE: an opaque op for torch.compile, which cannot trace `random_` and would break the graph at every
# dropout (a dozen small graphs per step); opaque, the mask's consumers still fuse around it.
@torch.library.custom_op("fpt::keep_mask_like", mutates_args=())
def keep_mask_like(like: torch.Tensor, p: float) -> torch.Tensor:
    """`keep_mask` of `like`'s shape, on its device."""
    return keep_mask(like.shape, p, like.device)


@keep_mask_like.register_fake
def _(like: torch.Tensor, p: float) -> torch.Tensor:
    return torch.empty(like.shape, dtype=torch.bool, device=like.device)


def fast_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    if not training or p == 0.0:
        return x
    return torch.where(keep_mask_like(x, p), x * (1.0 / (1.0 - p)), 0.0)


class FastDropout(nn.Dropout):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)


def swap_modules(model: nn.Module, matches, replacement) -> int:
    """Replace every submodule `m` with `matches(m)` by `replacement(m)`; returns the count."""
    swapped = 0
    for module in model.modules():
        for name, child in module.named_children():
            if matches(child):
                # the new module keeps the old one's train/eval mode (a fresh module starts in train mode)
                setattr(module, name, replacement(child).train(child.training))
                swapped += 1
    return swapped


def use_fast_dropout(model: nn.Module) -> int:
    """Swap every `nn.Dropout` for `FastDropout` (same p, same train/eval switch); returns the count."""
    return swap_modules(model, lambda m: type(m) is nn.Dropout, lambda m: FastDropout(m.p))


class TanhGELU(nn.Module):
    """`gelu_new` (0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))) as torch's one fused kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")


def use_fused_gelu(model: nn.Module) -> int:
    """Swap transformers' `NewGELUActivation` (GPT-2's `gelu_new`) for `TanhGELU`; returns the count."""
    return swap_modules(model, lambda m: type(m).__name__ == "NewGELUActivation", lambda m: TanhGELU())


# At this many keys and more, torch's fused CPU kernel (flash attention, no T x T matrix) beats the
# eager path; below it the eager path wins (its backward is 1.1-1.5x faster at 64-256 tokens).
# Measured on the 2-core CPU, MiniLM, bf16 (docs/performance.md). The fused kernel has no dropout
# of its own, so steps with attention dropout stay on the eager path.
SDPA_MIN_KEYS = 512
# ... and for heads of at most this width: the fused kernel saves passes over the (T, T) scores, whose
# cost against the matmuls' shrinks as heads widen. 1024 tokens, bf16, forward and backward, fused /
# eager ms: 115 / 331 at d = 32 (MiniLM), 203 / 361 at 64 (GPT-2), 173-233 / 238 at 128, 163-304 / 149-237
# at 256 (Gemma 3 270M, whose step took 10.8 s fused against 9.0 s eager).
SDPA_MAX_HEAD_DIM = 128
_weights_wanted = False


@contextlib.contextmanager
def attention_weights_wanted():
    """Within this block `cpu_attention` always runs the eager path and returns the weights."""
    global _weights_wanted
    before, _weights_wanted = _weights_wanted, True
    try:
        yield
    finally:
        _weights_wanted = before


def cpu_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                  **kwargs):
    """BERT's, ViT's, GPT-2's and Gemma 3's attention (transformers' `eager_attention_forward`), for the CPU.

    q: (B, H, T, d); k, v: (B, H / g, T, d), g = `module.num_key_value_groups` (1 but for Gemma);
    `attention_mask` None or boolean (B, 1, Tq, Tk), True where a query may look (transformers' sdpa
    mask, registered for this implementation, sliding windows included; None also for a causal model
    without padding, whose module says `is_causal`). Only for architectures whose own
    eager attention is exactly this (Architecture.standard_eager). Returns (out (B, T, H, d), weights or
    None); the weights feed the attention-map hooks of fpt/attention.py.
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
    if (dropout == 0.0 and softcap is None and key.shape[-2] >= SDPA_MIN_KEYS and query.shape[-1] <= SDPA_MAX_HEAD_DIM
            and not _weights_wanted):
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scaling,
                                             is_causal=causal)
        return out.transpose(1, 2).contiguous(), None
    if causal:  # (Tq, Tk), True on and below the diagonal (queries are the last Tq positions)
        tq, tk = query.shape[2], key.shape[2]
        attention_mask = torch.ones(tq, tk, dtype=torch.bool, device=query.device).tril(tk - tq)
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
        kept = torch.where(keep_mask_like(weights, dropout), weights, 0.0)
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
