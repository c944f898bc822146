"""Model rows: what sits between FPT's input and output layers (`--model`).

  fpt   a Hugging Face backbone (pretrained, random or stats init; `--layers N` keeps
        its first N residual blocks; `--lora-r R` adds peft LoRA adapters)
  lstm  the paper's LSTM baseline: 3 layers of width 768 with layer norm, fully trained

Every row has the same input and output layers (fpt/model.py `FPT`); a row only
builds the body and says which groups train by default. Each row is one
registry entry, so `build_model` has no if-chain over row names.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from fpt.backbones import Backbone, load_backbone
from fpt.backbones.architectures import FPT_GROUPS, TRAINABLE_GROUPS
from fpt.errors import FPTError
from fpt.registry import Registry

LSTM_WIDTH = 768  # the paper's LSTM baseline
LSTM_LAYERS = 3
LSTM_LR = 3e-4  # the paper's learning rate for the LSTM (pass --lr 3e-4; lr stays configurable)


@dataclass(frozen=True)
class ModelKind:
    name: str
    description: str
    build: Callable  # (cfg, spec) -> (body nn.Module, width, Backbone | None)
    default_train: tuple[str, ...]  # groups that learn when the config does not name them


MODELS: Registry[ModelKind] = Registry("model")


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

    def parameter_groups(self) -> dict[str, str]:
        """Parameter name -> group, by module: LSTM cells are `recurrent`, norms `layernorm`."""
        groups = {}
        for path, module in self.named_modules():
            group = {nn.LSTM: "recurrent", nn.LayerNorm: "layernorm"}.get(type(module))
            if group:
                groups.update({f"{path}.{n}": group for n, _ in module.named_parameters()})
        return groups


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
    from fpt.utils import pick_device

    return FPT_CPU if pick_device(cfg.device).type == "cpu" else "sdpa"


def _build_transformer(cfg, spec):
    from fpt.lora import add_lora
    from fpt.model import HFBody

    backbone = load_backbone(cfg.backbone, init=cfg.init, dropout=cfg.dropout,
                             attn_implementation=resolve_attention(cfg), seed=cfg.seed)
    if cfg.layers is not None:
        truncate_layers(backbone, cfg.layers)
    body = HFBody(backbone, spec.seq_len, last_block_at_readout=cfg.last_block_at_readout)
    if cfg.lora_r > 0:
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed)
            add_lora(body.model, backbone.arch, r=cfg.lora_r, targets=cfg.lora_targets)
    return body, backbone.width, backbone


def _build_lstm(cfg, spec):
    torch.manual_seed(cfg.seed)
    return LSTMBody(LSTM_WIDTH, cfg.layers or LSTM_LAYERS, dropout=cfg.dropout), LSTM_WIDTH, None


MODELS.register("fpt", ModelKind(
    "fpt", "a transformer backbone (--backbone, --init, --layers, --lora-r); FPT's groups train by default",
    _build_transformer, FPT_GROUPS))
MODELS.register("lstm", ModelKind(
    "lstm", f"{LSTM_LAYERS}-layer LSTM of width {LSTM_WIDTH} with layer norm, fully trained "
    f"(the paper used --lr {LSTM_LR:g})", _build_lstm, TRAINABLE_GROUPS))


def build_model(cfg, spec):
    """(FPT model with exactly cfg.train learning, its Backbone or None) for the config's row."""
    from fpt.model import FPT, apply_trainable

    kind = MODELS.get(cfg.model)
    body, width, backbone = kind.build(cfg, spec)
    torch.manual_seed(cfg.seed)  # the new layers' init does not depend on how the body was built
    model = FPT(body, spec, width)
    apply_trainable(model, cfg.train)
    return model, backbone
