"""Model rows: what sits between FPT's input and output layers (`--model`).

  fpt   a Hugging Face backbone (pretrained, random or stats init; `--layers N` keeps
        its first N residual blocks; `--lora-r R` adds peft LoRA adapters)
  lstm  the paper's LSTM baseline: 3 layers of width 768 with layer norm, fully trained

Every row has the same input and output layers (fpt/models/model.py `FPT`); a row only
builds the body (HFBody or LSTMBody, here: `build_transformer`, `build_lstm`). The rows themselves, with the
groups each trains by default and the builder they name, are the MODELS entries of fpt/core/rows.py, so that
`build_model` has no if-chain over row names. Each body names its own parameters' groups
(`parameter_groups`) and says what it is (`describe`).
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from fpt.backbones import Backbone, load_backbone, readout
from fpt.backbones.architectures import classify_body
from fpt.core.errors import FPTError
from fpt.core.rows import LSTM_LAYERS, LSTM_WIDTH
from fpt.models.lora import lora_parameter_names


def body_summary(a: dict) -> str:
    """A body's description (`describe()`'s fields, or an older record's) in words: 'bert (post-LN), 6 layers
    x 384, 12 heads', 'LSTM, 3 layers x 768'. The one place these words are made."""
    return (a["kind"].removesuffix("Body") + (f" ({a['norm']})" if a.get("norm") else "")
            + f", {a['layers']} layers x {a['width']}" + (f", {a['heads']} heads" if a.get("heads") else ""))


class LSTMBody(nn.Module):
    """A stack of LSTM layers, each pre-normed and residual, then a final layer norm.

    NOTE: the LSTM runs left to right, so padding after a sequence's real tokens
    never reaches the tokens the output is read from; no mask is needed.
    """

    def __init__(self, width: int = LSTM_WIDTH, num_layers: int = LSTM_LAYERS, dropout: float = 0.0):
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(num_layers))
        self.lstms = nn.ModuleList(nn.LSTM(width, width, batch_first=True) for _ in range(num_layers))
        self.final_norm = nn.LayerNorm(width)
        self.dropout = nn.Dropout(dropout)
        self.width = width

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for norm, lstm in zip(self.norms, self.lstms):
            out, _ = lstm(norm(h))  # (B, T, D)
            h = h + self.dropout(out)
        return self.final_norm(h)  # (B, T, D)

    def describe(self) -> dict:
        """What this body is, for the run's record and the report's notes (which never test class names)."""
        a = {"kind": type(self).__name__, "layers": len(self.lstms), "width": self.width}
        return {**a, "summary": body_summary(a)}

    def parameter_groups(self) -> dict[str, str]:
        """Parameter name -> group, by module: LSTM cells are `recurrent`, norms `layernorm`."""
        groups = {}
        for path, module in self.named_modules():
            group = {nn.LSTM: "recurrent", nn.LayerNorm: "layernorm"}.get(type(module))
            if group:
                groups.update({f"{path}.{n}": group for n, _ in module.named_parameters()})
        return groups


class HFBody(nn.Module):
    """Runs a Hugging Face base model on embeddings we provide (its token embedding is unused).

    Where the model takes no `inputs_embeds` (ViT), it runs the model's blocks and final norm instead.
    """

    def __init__(self, backbone: Backbone, seq_len: int, last_block_at_readout: bool = True):
        super().__init__()
        self.model = backbone.model
        self.arch = backbone.arch
        self.width = backbone.width
        _fit_positions(self.model, self.arch, seq_len + self.arch.position_offset)
        # NOTE: a rotary model (Gemma) has no learned positions, ViT only 197 image ones; FPT gives them a
        # new table of its own, added to the inputs (the "positions" group). Gemma's rotary encoding still
        # applies inside attention.
        self.positions = None
        if self.arch.add_positions:
            self.positions = nn.Embedding(seq_len, self.width)
            nn.init.normal_(self.positions.weight, std=0.02)
        # the last block at the read-out tokens only (fpt/backbones/readout.py); False where it has no such path
        row_block = readout.install(self.last_block, self.arch.row_block) if last_block_at_readout else None
        self.reads_rows = row_block is not None
        self.rows_keep_length = self.reads_rows and row_block.keeps_length  # GPT-2: the rows gathered here

    def describe(self) -> dict:
        """What this body is, for the run's record and the report's notes (which never test class names)."""
        config = self.model.config
        layers = len(self.model.get_submodule(self.arch.layers))
        a = {"kind": config.model_type, "layers": layers, "width": self.width,
             "heads": getattr(config, "num_attention_heads", None), "norm": self.arch.norm_position}
        return {**a, "summary": body_summary(a)}

    @contextlib.contextmanager
    def full_last_block(self):
        """Within this block the last block runs at every token (attention maps want all of its rows)."""
        before, self.reads_rows = self.reads_rows, False
        try:
            yield
        finally:
            self.reads_rows = before

    @property
    def last_block(self) -> nn.Module:
        return self.model.get_submodule(self.arch.layers)[-1]

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) embeddings -> (B, T, D) final hidden states, or (B, K, D) at `rows` (B, K) when given.

        `rows` only where `reads_rows`.
        """
        if rows is None:
            return self._forward(h, mask)
        block = self.last_block
        block.fpt_rows = rows
        try:
            out = self._forward(h, mask)  # (B, K, D), or (B, T, D) with the read rows computed
        finally:
            block.fpt_rows = None
        return readout.gather_rows(out, rows) if self.rows_keep_length else out

    def _forward(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, t, _ = h.shape
        pos = torch.arange(t, device=h.device).unsqueeze(0)  # (1, T)
        if self.positions is not None:
            h = h + self.positions(pos)  # (B, T, D) + (1, T, D)
        if self.arch.final_norm is not None:
            return self._run_blocks(h, mask)
        kwargs = {"position_ids": pos + self.arch.position_offset}
        if "token_type_ids" in self.arch.extra_forward_kwargs:
            kwargs["token_type_ids"] = torch.zeros(1, t, dtype=torch.long, device=h.device).expand(b, t)
        out = self.model(inputs_embeds=h, attention_mask=mask, use_cache=False, **kwargs)
        return out.last_hidden_state  # (B, T, D)

    def _run_blocks(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The blocks and final norm, without the model's forward (ViT's reads only pixel_values)."""
        from transformers.masking_utils import create_bidirectional_mask

        # (B, T) padding mask -> what the attention implementation takes: None (no padding under sdpa),
        # or (B, 1, T, T)
        mask = create_bidirectional_mask(config=self.model.config, inputs_embeds=h, attention_mask=mask)
        for block in self.model.get_submodule(self.arch.layers):
            h = block(h, mask)  # (B, T, D)
        return self.model.get_submodule(self.arch.final_norm)(h)  # (B, T, D)

    def parameter_groups(self) -> dict[str, str]:
        """Parameter name -> group: the HF model's by its architecture row (module visits, classify_body), FPT's
        own position table `positions`, LoRA adapters `lora`."""
        groups = {f"model.{n}": g for n, g in classify_body(self.model, self.arch).items()}
        if self.positions is not None:
            groups.update({f"positions.{n}": "positions" for n, _ in self.positions.named_parameters()})
        groups.update({f"model.{n}": "lora" for n in lora_parameter_names(self.model)})
        return groups


@torch.no_grad()
def _fit_positions(model: nn.Module, arch, seq_len: int) -> None:
    """Grow a learned position table that is shorter than the task's sequences.

    NOTE: MiniLM has 512 positions and GPT-2 1024, but CIFAR-10 LRA needs 1024 and
    ListOps up to 2000. Like Longformer, we tile the pretrained rows to the new
    length; the positions group is trained in FPT anyway.
    """
    for path in arch.positions:
        old = model.get_submodule(path)
        if old.num_embeddings >= seq_len:
            continue
        new = nn.Embedding(seq_len, old.embedding_dim).to(old.weight.device, old.weight.dtype)
        reps = math.ceil(seq_len / old.num_embeddings)
        new.weight.copy_(old.weight.repeat(reps, 1)[:seq_len])
        parent_path, _, attr = path.rpartition(".")
        setattr(model.get_submodule(parent_path) if parent_path else model, attr, new)
        model.config.max_position_embeddings = seq_len
        if hasattr(model.config, "n_positions"):
            model.config.n_positions = seq_len


def truncate_layers(backbone: Backbone, n: int) -> None:
    """Keep the first `n` residual blocks of the backbone (the paper's 12, or 3 for CIFAR-10)."""
    blocks = backbone.model.get_submodule(backbone.arch.layers)
    if not 0 < n <= len(blocks):
        raise FPTError(f"layers must be between 1 and {len(blocks)} for backbone {backbone.name!r}, got {n}")
    del blocks[n:]
    backbone.model.config.num_hidden_layers = n  # GPT-2 maps this to n_layer


def resolve_attention(cfg) -> str:
    """`auto` -> fpt's CPU attention on the CPU (fpt/fastops: eager, or SDPA at long lengths without
    attention dropout), sdpa elsewhere (docs/performance.md)."""
    if cfg.attn_implementation != "auto":
        return cfg.attn_implementation
    from fpt.fastops import FPT_CPU
    from fpt.core.host import pick_device

    return FPT_CPU if pick_device(cfg.device).type == "cpu" else "sdpa"


def use_fast_ops(backbone: Backbone, attn_implementation: str) -> None:
    """Swap fpt's faster modules (fpt/fastops) into a loaded body for the implementation resolve_attention
    picked: fpt_cpu's dropout, fused residual and projected attention; the fused GELU on every path but `eager`
    (transformers' modules as published: the bench's reference loop)."""
    from fpt import fastops
    from fpt.backbones.architectures import fused_classes

    arch = backbone.arch
    if attn_implementation == fastops.FPT_CPU:
        fastops.use_fast_dropout(backbone.model)
        fastops.use_fused_residual(backbone.model, fused_classes(arch.fused_residual))
        fastops.use_projected_attention(backbone.model, fused_classes(arch.projected_attention))
    if attn_implementation != "eager":
        fastops.use_fused_gelu(backbone.model, fused_classes(arch.tanh_gelu))


def build_transformer(cfg, spec):
    """The `fpt` row's body (fpt/core/rows.py): a Hugging Face backbone, fpt's fast modules swapped in."""
    from fpt.models.lora import add_lora

    attn_implementation = resolve_attention(cfg)
    backbone = load_backbone(cfg.backbone, init=cfg.init, dropout=cfg.dropout,
                             attn_implementation=attn_implementation, seed=cfg.seed)
    use_fast_ops(backbone, attn_implementation)
    if cfg.layers is not None:
        truncate_layers(backbone, cfg.layers)
    body = HFBody(backbone, spec.seq_len, last_block_at_readout=cfg.last_block_at_readout)
    if cfg.lora_r > 0:
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed)
            add_lora(body.model, backbone.arch, r=cfg.lora_r, targets=cfg.lora_targets)
    return body, backbone.width, backbone


def build_lstm(cfg, spec):
    """The `lstm` row's body (fpt/core/rows.py)."""
    torch.manual_seed(cfg.seed)
    return LSTMBody(LSTM_WIDTH, cfg.layers or LSTM_LAYERS, dropout=cfg.dropout), LSTM_WIDTH, None

