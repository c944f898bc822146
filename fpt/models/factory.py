"""A config's model row built: the body its MODELS entry makes (fpt/models/bodies.py), inside the FPT model
(fpt/models/model.py) with exactly cfg.train learning. Above both, so that neither imports the other's builder."""
from __future__ import annotations

import torch

from fpt.models.bodies import MODELS
from fpt.models.model import FPT, apply_trainable


def build_model(cfg, spec):
    """(FPT model with exactly cfg.train learning, its Backbone or None) for the config's row."""
    kind = MODELS.get(cfg.model)
    body, width, backbone = kind.build(cfg, spec)
    torch.manual_seed(cfg.seed)  # the new layers' init does not depend on how the body was built
    model = FPT(body, spec, width)
    apply_trainable(model, cfg.train)
    return model, backbone
