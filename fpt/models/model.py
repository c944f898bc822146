"""The FPT model: input layer -> (frozen) transformer body -> output layer.

Layer sizes are derived from the task spec and the backbone's width, never
configured. What trains is decided in one place, `apply_trainable`, from the
parameter groups that `parameter_groups` assigns by visiting modules.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fpt.backbones import readout
from fpt.backbones import Backbone
from fpt.backbones.architectures import linear_layer_types
from fpt.models.bodies import HFBody  # noqa: F401  (also fpt.models.model's API, where it lived)
from fpt.core.errors import FPTError
from fpt.core.groups import GROUPS, parse_groups  # noqa: F401  (parse_groups: fpt.models.model's API)
from fpt.tasks.base import TaskSpec

INPUT_INIT_GAIN = 1.41  # the paper's orthogonal init gain for the new input layer


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
    linear = linear_layer_types(getattr(model.body, "arch", None))  # nn.Linear, and GPT-2's Conv1D
    cast = 0
    for module in model.modules():
        if isinstance(module, linear):
            for p in module.parameters(recurse=False):
                if not p.requires_grad and p.is_floating_point() and p.dtype != dtype:
                    p.data = p.data.to(dtype)
                    cast += p.numel()
    return cast


def parameter_groups(model: FPT) -> dict[str, str]:
    """Every parameter name of `model` -> its group (one of GROUPS)."""
    groups = {f"input_layer.{n}": "input" for n, _ in model.input_layer.named_parameters()}
    groups.update({f"output_layer.{n}": "output" for n, _ in model.output_layer.named_parameters()})
    groups.update({f"body.{n}": g for n, g in model.body.parameter_groups().items()})  # each body says its own
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
