"""The model rows (`--model`): what each is, the groups it trains when the config names none, and where its
builder lives. At the bottom of the import graph, so that `TrainConfig` resolves `train` when it is built
and every layer above (run names, checks, config.yaml, resume) sees the same groups. The builder is named,
not imported (as transformers' auto classes map names to classes lazily): fpt/models/factory.py imports it.
"""
from __future__ import annotations

from dataclasses import dataclass

from fpt.core.groups import FPT_GROUPS, TRAINABLE_GROUPS
from fpt.core.registry import Registry

LSTM_WIDTH = 768  # the paper's LSTM baseline
LSTM_LAYERS = 3
LSTM_LR = 3e-4  # the paper's learning rate for the LSTM (pass --lr 3e-4; lr stays configurable)


@dataclass(frozen=True)
class ModelRow:
    name: str
    description: str
    default_train: tuple[str, ...]  # the groups that learn when the config does not name them
    builder: str  # "module:function" in fpt/models/: (cfg, spec) -> (body nn.Module, width, Backbone | None)


MODELS: Registry[ModelRow] = Registry("model")
MODELS.register("fpt", ModelRow(
    "fpt", "a transformer backbone (--backbone, --init, --layers, --lora-r); FPT's groups train by default",
    FPT_GROUPS, "fpt.models.bodies:build_transformer"))
MODELS.register("lstm", ModelRow(
    "lstm", f"{LSTM_LAYERS}-layer LSTM of width {LSTM_WIDTH} with layer norm, fully trained "
    f"(the paper used --lr {LSTM_LR:g})", TRAINABLE_GROUPS, "fpt.models.bodies:build_lstm"))
