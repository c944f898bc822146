"""A config's model row built: the body its MODELS entry (fpt/core/rows.py) names a builder for
(fpt/models/bodies.py), inside the FPT model (fpt/models/model.py) with exactly cfg.train learning. Above
both, so that neither imports the other's builder."""
from __future__ import annotations

import importlib

import torch

from fpt.core.rows import MODELS
from fpt.models.model import FPT, apply_trainable


def build_model(cfg, spec):
    """(FPT model with exactly cfg.train learning, its Backbone or None) for the config's row."""
    module, _, function = MODELS.get(cfg.model).builder.partition(":")
    body, width, backbone = getattr(importlib.import_module(module), function)(cfg, spec)
    torch.manual_seed(cfg.seed)  # the new layers' init does not depend on how the body was built
    model = FPT(body, spec, width)
    apply_trainable(model, cfg.train)
    return model, backbone
