"""The last residual block computed only at the tokens the output layer reads.

FPT reads its output from the last token(s) (K of T; K = 1 for images). In the last block every other
token's query, attention output and feed-forward are computed and thrown away: for MiniLM on MNIST
(6 blocks, 64 tokens) that is about 1/7 of the forward and backward. Here the last block takes keys
and values from all T tokens (the read tokens attend to all of them, as before) and everything else
at the K read rows only. The math is the same; float sums may round differently, and dropout draws
fewer random numbers, so a run differs from the unpruned one as two seeds differ.

Off where all of the last block's attention is wanted (the attention maps of fpt/attention.py),
and for architectures without a row-wise block here (their last block runs in full).
"""
from __future__ import annotations

import types
from typing import Callable

import torch
from torch import nn


def gather_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """x (B, T, D), rows (B, K) token indices -> (B, K, D)."""
    return torch.gather(x, 1, rows.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _mask_rows(mask: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor | None:
    """A (B, 1, T, T) additive or boolean attention mask -> the read rows' (B, 1, K, T)."""
    if mask is None or mask.shape[2] == 1:  # None, or one row broadcast to every query
        return mask
    b, h, _, t = mask.shape
    return torch.gather(mask, 2, rows[:, None, :, None].expand(b, h, rows.shape[1], t))


def _bert_block_at_rows(layer: nn.Module, hidden: torch.Tensor, mask: torch.Tensor | None,
                        rows: torch.Tensor) -> torch.Tensor:
    """BertLayer's forward (self-attention, add & norm, feed-forward, add & norm) at `rows` only."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.bert.modeling_bert import eager_attention_forward

    attn = layer.attention.self
    b, t, _ = hidden.shape
    x = gather_rows(hidden, rows)  # (B, K, D)
    k = rows.shape[1]
    d = attn.attention_head_size
    query = attn.query(x).view(b, k, -1, d).transpose(1, 2)  # (B, H, K, d)
    key = attn.key(hidden).view(b, t, -1, d).transpose(1, 2)  # (B, H, T, d)
    value = attn.value(hidden).view(b, t, -1, d).transpose(1, 2)
    interface = ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation, eager_attention_forward)
    out, _ = interface(attn, query, key, value, _mask_rows(mask, rows),
                       dropout=attn.dropout.p if attn.training else 0.0, scaling=attn.scaling)
    out = layer.attention.output(out.reshape(b, k, -1), x)  # (B, K, D): dense, dropout, norm(out + x)
    return layer.feed_forward_chunk(out)  # (B, K, D)


#: model_type -> the last block's forward at given rows: (block, hidden (B, T, D), mask, rows (B, K)) -> (B, K, D)
BLOCKS_AT_ROWS: dict[str, Callable] = {"bert": _bert_block_at_rows}


def install(block: nn.Module, model_type: str) -> bool:
    """Let `block` run at rows: while `block.fpt_rows` is a (B, K) tensor it returns (B, K, D)."""
    at_rows = BLOCKS_AT_ROWS.get(model_type)
    if at_rows is None:
        return False
    full = block.forward
    block.fpt_rows = None

    def forward(self, hidden_states, attention_mask=None, *args, **kwargs):
        if self.fpt_rows is None:
            return full(hidden_states, attention_mask, *args, **kwargs)
        return at_rows(self, hidden_states, attention_mask, self.fpt_rows)

    block.forward = types.MethodType(forward, block)  # an instance attribute: parameter names stay
    return True
