"""BERT's self-attention with q, k, v from one matmul into short attention (eager bf16 on the CPU).

The backward writes the three gradients into one (B, T, 3, H, d) tensor and takes them back to the hidden
state in one matmul: no weight gradients (the projections are frozen), one cast and no sums where separate
projections take three of each. Eager only: under torch.compile the module keeps its own forward.
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from fpt.fastops.attention import FPT_CPU
from fpt.fastops.dropout import draw_seed
from fpt.fastops.short_attention_kernel import (mask_bytes, short_attention_backward, short_attention_forward,
                                                short_attention_takes)
from fpt.fastops.swap import swap_forward
from fpt.fastops.switches import SWITCHES


class ProjectedShortAttention(torch.autograd.Function):
    """hidden (B, T, D) -> q, k, v from one matmul with the projections' weights stacked (3 H d x D), as a
    (B, T, 3, H, d) tensor -> short attention -> (B, T, H, d)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, mask, heads: int, scale: float, seed: int, p: float):
        b, t, width = hidden.shape
        with torch.autocast("cpu", enabled=False):
            qkv = torch.addmm(bias, hidden.reshape(b * t, width).to(torch.bfloat16), weight.t())
        qkv = qkv.view(b, t, 3, heads, -1)
        q, k, v = (x.transpose(1, 2) for x in qkv.unbind(2))
        out, probs = short_attention_forward(q, k, v, mask, seed, scale, p)
        ctx.save_for_backward(qkv, probs, weight)
        ctx.args, ctx.hidden_dtype = (seed, scale, p), hidden.dtype
        return out

    @staticmethod
    def backward(ctx, grad):
        qkv, probs, weight = ctx.saved_tensors
        b, t = qkv.shape[:2]
        grads = torch.empty_like(qkv)
        short_attention_backward(*(x.transpose(1, 2) for x in qkv.unbind(2)), probs, grad, *ctx.args, fused=grads)
        with torch.autocast("cpu", enabled=False):
            hidden_grad = torch.mm(grads.view(b * t, -1), weight).view(b, t, -1)
        return hidden_grad.to(ctx.hidden_dtype), None, None, None, None, None, None, None


def projections_fuse(self, hidden_states: torch.Tensor, attention_mask, past_key_values) -> bool:
    """Whether this call takes `ProjectedShortAttention`: fpt's CPU attention in eager bf16 autocast, plain
    frozen linear projections (not LoRA-wrapped, not trained), and what the kernel takes."""
    projections = (self.query, self.key, self.value)
    return (past_key_values is None and not SWITCHES.weights_wanted and not torch.compiler.is_compiling()
            and self.config._attn_implementation == FPT_CPU and hidden_states.device.type == "cpu"
            and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
            and all(type(m) is nn.Linear and m.bias is not None and not m.weight.requires_grad
                    and not m.bias.requires_grad for m in projections)
            and short_attention_takes(hidden_states.shape[1], self.attention_head_size, attention_mask))


@functools.cache
def _projected_attention_forward(cls: type):
    def forward(self, hidden_states, attention_mask=None, past_key_values=None, **kwargs):
        if not projections_fuse(self, hidden_states, attention_mask, past_key_values):
            return cls.forward(self, hidden_states, attention_mask, past_key_values, **kwargs)
        projections = (self.query, self.key, self.value)
        weight = torch.cat([m.weight for m in projections]).to(torch.bfloat16)  # (3 H d, D); bf16 already in bf16 runs
        bias = torch.cat([m.bias for m in projections]).to(torch.bfloat16)
        b, t, _ = hidden_states.shape
        p = self.dropout.p if self.training else 0.0
        out = ProjectedShortAttention.apply(hidden_states, weight, bias, mask_bytes(attention_mask, b, t),
                                            self.num_attention_heads, self.scaling, draw_seed() if p > 0.0 else 0, p)
        return out.reshape(b, t, -1), None

    return forward


def use_projected_attention(model: nn.Module, classes: tuple[type, ...]) -> int:
    """Give every module of `classes` (the architecture's `projected_attention`: transformers modules whose
    forward is exactly query, key and value linear layers on the hidden state, then the attention interface)
    the fused projection forward, which falls back to its own where `projections_fuse` says no; returns the
    count."""
    return swap_forward(model, classes, _projected_attention_forward,
                        "with q, k, v from one matmul into short attention.")
