"""The FPT model: input layer -> (frozen) transformer body -> output layer.

Layer sizes are derived from the task spec and the backbone's width, never
configured. What trains is decided in one place, `apply_trainable`, from the
parameter groups that `parameter_groups` assigns by visiting modules.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn

from fpt import readout
from fpt.backbones import Backbone
from fpt.backbones.architectures import classify_body
from fpt.errors import FPTError
from fpt.groups import GROUPS, parse_groups  # noqa: F401  (parse_groups: fpt.model's API)
from fpt.lora import lora_parameter_names
from fpt.tasks.base import TaskSpec

INPUT_INIT_GAIN = 1.41  # the paper's orthogonal init gain for the new input layer


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
        # the last block at the read-out tokens only (fpt/readout.py); False where it has no such path
        row_block = readout.install(self.last_block, self.arch.model_type) if last_block_at_readout else None
        self.reads_rows = row_block is not None
        self.rows_keep_length = self.reads_rows and row_block.keeps_length  # GPT-2: the rows gathered here

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


class FPT(nn.Module):
    """input_layer -> body -> output_layer, read from the last `output_tokens` real tokens."""

    def __init__(self, body: nn.Module, spec: TaskSpec, width: int):
        super().__init__()
        self.spec = spec
        self.width = width
        if spec.input_kind == "tokens":
            self.input_layer = nn.Embedding(spec.vocab_size, width)
        else:
            self.input_layer = nn.Linear(spec.token_dim, width)
            nn.init.orthogonal_(self.input_layer.weight, gain=INPUT_INIT_GAIN)
            nn.init.zeros_(self.input_layer.bias)
        self.body = body
        self.output_layer = nn.Linear(width, spec.targets_per_token * spec.num_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T, token_dim) or (B, T) ids -> logits (B, num_targets, num_classes)."""
        return self.head(self.features(x, lengths))

    def features(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """x -> the body's final hidden states at the output tokens, (B, K, D)."""
        h = self.input_layer(x)  # (B, T, D)
        b, t, _ = h.shape
        mask = None
        if lengths is not None:
            mask = (torch.arange(t, device=h.device).unsqueeze(0) < lengths.unsqueeze(1)).long()  # (B, T)
        k = self.spec.output_tokens
        if lengths is None:
            rows = torch.arange(t - k, t, device=h.device).expand(b, k)  # (B, K)
        else:
            # NOTE: read the last *real* tokens, not whatever padding comes last.
            rows = (lengths.unsqueeze(1) - k + torch.arange(k, device=h.device)).clamp(min=0)  # (B, K)
        if getattr(self.body, "reads_rows", False):
            return self.body(h, mask, rows)  # (B, K, D)
        return readout.gather_rows(self.body(h, mask), rows)  # (B, T, D) -> (B, K, D)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """(B, K, D) features -> logits (B, num_targets, num_classes)."""
        logits = self.output_layer(h)  # (B, K, P * C)
        return logits.reshape(h.shape[0], self.spec.num_targets, self.spec.num_classes)


def build_fpt(backbone: Backbone, spec: TaskSpec, last_block_at_readout: bool = True) -> FPT:
    return FPT(HFBody(backbone, spec.seq_len, last_block_at_readout), spec, backbone.width)


def store_frozen_matmul_weights(model: nn.Module, dtype: torch.dtype) -> int:
    """Keep the frozen weights of linear layers in `dtype` (bf16 runs); returns how many were cast.

    Under bf16 autocast every matmul casts its fp32 weight to bf16 at each call, and autocast's cast
    cache only holds weights that require grad: a frozen body was re-cast on every forward. Casting
    it once gives the same numbers. Trainable parameters and optimizer state stay fp32.
    """
    cast = 0
    for module in model.modules():
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":  # GPT-2's linear layers
            for p in module.parameters(recurse=False):
                if not p.requires_grad and p.is_floating_point() and p.dtype != dtype:
                    p.data = p.data.to(dtype)
                    cast += p.numel()
    return cast


def parameter_groups(model: FPT) -> dict[str, str]:
    """Every parameter name of `model` -> its group (one of GROUPS)."""
    groups = {f"input_layer.{n}": "input" for n, _ in model.input_layer.named_parameters()}
    groups.update({f"output_layer.{n}": "output" for n, _ in model.output_layer.named_parameters()})
    body = model.body
    if isinstance(body, HFBody):
        groups.update({f"body.model.{n}": g for n, g in classify_body(body.model, body.arch).items()})
        if body.positions is not None:
            groups.update({f"body.positions.{n}": "positions" for n, _ in body.positions.named_parameters()})
        groups.update({f"body.model.{n}": "lora" for n in lora_parameter_names(body.model)})
    else:
        groups.update({f"body.{n}": g for n, g in body.parameter_groups().items()})
    missing = {n for n, _ in model.named_parameters()} - set(groups)
    if missing:
        raise FPTError(f"parameters without an FPT group: {sorted(missing)[:3]}")
    return groups


def apply_trainable(model: FPT, train: tuple[str, ...]) -> dict[str, str]:
    """Freeze every parameter whose group is not in `train`; the only place that decides."""
    groups = parameter_groups(model)
    params = dict(model.named_parameters())
    for name, group in groups.items():
        params[name].requires_grad_(group in train)
    return groups


@dataclass(frozen=True)
class GroupCount:
    group: str
    total: int
    trainable: int


def count_parameters(model: FPT) -> list[GroupCount]:
    """Total and trainable parameters per group.

    NOTE: only the first `seq_len` rows of a position table receive gradients, so
    only those count as trainable: the rest never change (Adam, no weight decay).
    """
    groups = parameter_groups(model)
    totals = {g: 0 for g in GROUPS}
    trainable = {g: 0 for g in GROUPS}
    for name, p in model.named_parameters():
        g = groups[name]
        totals[g] += p.numel()
        if p.requires_grad:
            used = p.numel()
            if g == "positions" and p.dim() == 2 and p.shape[0] > model.spec.seq_len:
                used = model.spec.seq_len * p.shape[1]
            trainable[g] += used
    return [GroupCount(g, totals[g], trainable[g]) for g in GROUPS]


def summarize_counts(counts: list[GroupCount]) -> dict:
    total = sum(c.total for c in counts)
    trainable = sum(c.trainable for c in counts)
    return {"trainable_params": trainable, "total_params": total,
            "trainable_pct": 100.0 * trainable / max(total, 1),
            "groups": {c.group: {"total": c.total, "trainable": c.trainable} for c in counts}}


def format_counts(counts: list[GroupCount], *, note: str = "") -> str:
    """A printable table, like PEFT's print_trainable_parameters but per group."""
    lines = [f"{'group':<12} {'total':>14} {'trainable':>14}"]
    for c in counts:
        if c.total == 0 and c.group in ("recurrent", "lora"):
            continue  # groups only some model rows have
        lines.append(f"{c.group:<12} {c.total:>14,} {c.trainable:>14,}")
    s = summarize_counts(counts)
    lines.append(f"{'all':<12} {s['total_params']:>14,} {s['trainable_params']:>14,}"
                 f"   ({s['trainable_pct']:.3f}% trainable)")
    if note:
        lines.append(note)
    return "\n".join(lines)
