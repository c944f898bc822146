"""The last residual block computed only at the tokens the output layer reads.

FPT reads its output from the last token(s) (K of T; K = 1 for images). In the last block every other
token's query, attention output and feed-forward are computed and thrown away: for MiniLM on MNIST
(6 blocks, 64 tokens) that is about 1/7 of the forward and backward. Here the last block takes keys
and values from all T tokens (the read tokens attend to all of them, as before) and everything else
at the K read rows only. The math is the same; float sums may round differently, and dropout draws
fewer random numbers, so a run differs from the unpruned one as two seeds differ.

BERT's, MPNet's, ViT's and Gemma 3's blocks return the K rows; GPT-2's returns all T (the read rows
computed, the others its input unchanged), because GPT2Model reshapes the last block's output to
(B, T, D) after its final norm; the body then gathers the read rows after that norm.

Off where all of the last block's attention is wanted (the attention maps of fpt/paper/attention.py), and
for architectures or configs without a row-wise block here (no `Architecture.row_block`, or
`RowBlock.covers` says no: their last block runs in full).
"""
from __future__ import annotations

import math
import types
from dataclasses import dataclass
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


def _heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(B, N, H * d) -> (B, H, N, d)."""
    return x.reshape(*x.shape[:2], -1, head_dim).transpose(1, 2)


def _attention_interface(attn: nn.Module, fallback: Callable) -> Callable:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation, fallback)


def _bert_block_at_rows(layer: nn.Module, rows: torch.Tensor, hidden: torch.Tensor,
                        attention_mask: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:
    """BertLayer's forward (self-attention, add & norm, feed-forward, add & norm) at `rows` only: (B, K, D)."""
    from transformers.models.bert.modeling_bert import eager_attention_forward

    attn = layer.attention.self
    x = gather_rows(hidden, rows)  # (B, K, D)
    d = attn.attention_head_size
    query = _heads(attn.query(x), d)  # (B, H, K, d)
    key, value = _heads(attn.key(hidden), d), _heads(attn.value(hidden), d)  # (B, H, T, d)
    out, _ = _attention_interface(attn, eager_attention_forward)(
        attn, query, key, value, _mask_rows(attention_mask, rows),
        dropout=attn.dropout.p if attn.training else 0.0, scaling=attn.scaling)
    out = layer.attention.output(out.flatten(2), x)  # (B, K, D): dense, dropout, norm(out + x)
    return layer.feed_forward_chunk(out)  # (B, K, D)


def _causal_rows_mask(rows: torch.Tensor, t: int, attn: nn.Module, dtype: torch.dtype,
                      window: int | None = None) -> torch.Tensor:
    """(B, 1, K, T): read row r sees keys 0..r (the last `window` of them when given), in the form the
    attention implementation takes (eager: additive floats; the others: booleans, True where a query may look)."""
    keys = torch.arange(t, device=rows.device)
    allowed = keys <= rows[..., None]  # (B, K, T)
    if window is not None:
        allowed &= keys > rows[..., None] - window
    allowed = allowed[:, None]  # (B, 1, K, T)
    if attn.config._attn_implementation != "eager":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=rows.device).masked_fill(~allowed, torch.finfo(dtype).min)


def _gpt2_block_at_rows(block: nn.Module, rows: torch.Tensor, hidden: torch.Tensor, past_key_values=None,
                        attention_mask: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:
    """GPT2Block's forward (pre-norm attention, then pre-norm MLP, each added to the residual) at `rows` only.

    Returns (B, T, D): `hidden` with the read rows replaced by the block's output there.
    """
    from transformers.models.gpt2.modeling_gpt2 import eager_attention_forward

    attn = block.attn
    t, width = hidden.shape[1:]
    # NOTE: c_attn ([query | key | value] in one layer) runs at every token, through the module (a LoRA
    # adapter on it takes part); only the read rows' queries are kept. Its query third at the other rows is
    # under a tenth of the block's work.
    query, key, value = attn.c_attn(block.ln_1(hidden)).split(width, dim=2)  # 3 x (B, T, D)
    query = _heads(gather_rows(query, rows), attn.head_dim)  # (B, H, K, d)
    key, value = _heads(key, attn.head_dim), _heads(value, attn.head_dim)  # (B, H, T, d)
    # the model's causal mask; None (no padding under sdpa) leaves causality to the implementation, which
    # cannot place K queries among T keys: the rows' own mask then
    mask = _mask_rows(attention_mask, rows) if attention_mask is not None else \
        _causal_rows_mask(rows, t, attn, query.dtype)
    out, _ = _attention_interface(attn, eager_attention_forward)(
        attn, query, key, value, mask, dropout=attn.attn_dropout.p if attn.training else 0.0, scaling=attn.scaling)
    out = attn.resid_dropout(attn.c_proj(out.flatten(2)))  # (B, K, H, d) -> (B, K, D)
    out = out + gather_rows(hidden, rows)
    out = out + block.mlp(block.ln_2(out))
    index = rows.unsqueeze(-1).expand(-1, -1, width)
    return hidden.scatter(1, index, out.to(hidden.dtype))  # (B, T, D)


def _vit_block_at_rows(layer: nn.Module, rows: torch.Tensor, hidden: torch.Tensor,
                       attention_mask: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:
    """ViTLayer's forward (pre-norm attention, then pre-norm MLP, each added to the residual) at `rows` only:
    (B, K, D). fpt runs ViT's blocks and final norm itself (HFBody._run_blocks), so K rows go on as they are."""
    from transformers.models.vit.modeling_vit import eager_attention_forward

    attn = layer.attention
    normed = layer.layernorm_before(hidden)  # (B, T, D): every token's keys and values are read
    query = _heads(attn.q_proj(gather_rows(normed, rows)), attn.head_dim)  # (B, H, K, d)
    key, value = _heads(attn.k_proj(normed), attn.head_dim), _heads(attn.v_proj(normed), attn.head_dim)
    out, _ = _attention_interface(attn, eager_attention_forward)(
        attn, query, key, value, _mask_rows(attention_mask, rows),
        dropout=attn.attention_dropout if attn.training else 0.0, scaling=attn.scaling)
    out = layer.dropout(attn.o_proj(out.flatten(2))) + gather_rows(hidden, rows)  # (B, K, D)
    return layer.dropout(layer.mlp(layer.layernorm_after(out))) + out


def _mpnet_block_at_rows(layer: nn.Module, rows: torch.Tensor, hidden: torch.Tensor,
                         attention_mask: torch.Tensor | None = None, position_bias: torch.Tensor | None = None,
                         *args, **kwargs) -> tuple[torch.Tensor]:
    """MPNetLayer's forward (BERT's post-norm block, with the encoder's relative position bias added to the
    scores) at `rows` only: ((B, K, D),), the tuple MPNetEncoder reads. MPNet's attention is its own eager
    math (transformers routes it through no attention registry); this is that math at K queries."""
    attn = layer.attention.attn
    d = attn.attention_head_size
    x = gather_rows(hidden, rows)  # (B, K, D)
    query = _heads(attn.q(x), d)  # (B, H, K, d)
    key, value = _heads(attn.k(hidden), d), _heads(attn.v(hidden), d)  # (B, H, T, d)
    scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(d)  # (B, H, K, T)
    if position_bias is not None:  # (B, H, T, T): the read rows' biases
        scores += _mask_rows(position_bias, rows)
    if attention_mask is not None:
        scores = scores + _mask_rows(attention_mask, rows)
    probs = attn.dropout(torch.softmax(scores, dim=-1))
    context = torch.matmul(probs, value).transpose(1, 2).flatten(2)  # (B, K, D)
    out = layer.attention.LayerNorm(layer.attention.dropout(attn.o(context)) + x)
    return (layer.output(layer.intermediate(out), out),)


def _gemma3_block_at_rows(layer: nn.Module, rows: torch.Tensor, hidden: torch.Tensor, position_embeddings=None,
                          attention_mask: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:
    """Gemma3DecoderLayer's forward (pre- and post-normed attention and MLP, rotary positions, a sliding window
    on local layers) at `rows` only: (B, K, D); Gemma3TextModel's final norm takes any length."""
    from transformers.models.gemma3.modeling_gemma3 import eager_attention_forward, rotate_half

    attn = layer.self_attn
    b, t, _ = hidden.shape
    normed = layer.input_layernorm(hidden)  # (B, T, D): every token's keys and values are read
    query = attn.q_norm(_heads(attn.q_proj(gather_rows(normed, rows)), attn.head_dim))  # (B, H, K, d)
    key = attn.k_norm(_heads(attn.k_proj(normed), attn.head_dim))  # (B, Hkv, T, d)
    value = _heads(attn.v_proj(normed), attn.head_dim)
    cos, sin = position_embeddings  # (B or 1, T, d): the read rows' angles for the queries, all for the keys
    cos_rows, sin_rows = (gather_rows(c.expand(b, -1, -1), rows)[:, None] for c in (cos, sin))  # (B, 1, K, d)
    query = query * cos_rows + rotate_half(query) * sin_rows
    key = key * cos[:, None] + rotate_half(key) * sin[:, None]
    # None (no padding, or T inside the window, under sdpa) leaves causality to the implementation, which
    # cannot place K queries among T keys: the rows' own mask then
    mask = _mask_rows(attention_mask, rows) if attention_mask is not None else \
        _causal_rows_mask(rows, t, attn, query.dtype, attn.sliding_window)
    out, _ = _attention_interface(attn, eager_attention_forward)(
        attn, query, key, value, mask, dropout=attn.attention_dropout if attn.training else 0.0,
        scaling=attn.scaling, sliding_window=attn.sliding_window)
    out = layer.post_attention_layernorm(attn.o_proj(out.flatten(2))) + gather_rows(hidden, rows)
    return out + layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(out)))


@dataclass(frozen=True)
class RowBlock:
    """How one architecture's last block runs at the read rows."""

    forward: Callable  # (block, rows (B, K), the block's own arguments...) -> (B, K, D), or (B, T, D) below
    keeps_length: bool  # returns all T rows (the read ones computed): the body gathers the rows itself
    covers: Callable[[nn.Module], bool] = lambda block: True  # False: this block's config is not covered


# Each architecture's row (fpt/backbones/architectures.py `row_block`) points to its own.
BERT_ROWS = RowBlock(_bert_block_at_rows, keeps_length=False)
VIT_ROWS = RowBlock(_vit_block_at_rows, keeps_length=False)
MPNET_ROWS = RowBlock(_mpnet_block_at_rows, keeps_length=False)
# causal Gemma only (not its bidirectional variant)
GEMMA3_ROWS = RowBlock(_gemma3_block_at_rows, keeps_length=False, covers=lambda block: block.self_attn.is_causal)
# not GPT-2 with cross-attention, nor with eager attention's reordered fp32 upcast (neither is used by FPT)
GPT2_ROWS = RowBlock(_gpt2_block_at_rows, keeps_length=True,
                     covers=lambda block: not (block.attn.config.add_cross_attention
                                               or block.attn.config.reorder_and_upcast_attn))


def install(block: nn.Module, row_block: RowBlock | None) -> RowBlock | None:
    """Let `block` run at rows while `block.fpt_rows` is a (B, K) tensor; None where the architecture has no
    row path (`row_block` None) or this block's config is one it does not cover."""
    if row_block is None or not row_block.covers(block):
        return None
    full = block.forward
    block.fpt_rows = None

    def forward(self, *args, **kwargs):
        if self.fpt_rows is None:
            return full(*args, **kwargs)
        return row_block.forward(self, self.fpt_rows, *args, **kwargs)

    block.forward = types.MethodType(forward, block)  # an instance attribute: parameter names stay
    return row_block
