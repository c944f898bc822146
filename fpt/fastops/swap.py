"""How fastops patches a loaded model: whole modules swapped, or modules given a fused forward."""
from __future__ import annotations

import functools

from torch import nn

# the patched classes' module: the package, whichever fastops module wrote their forward
PATCHED_MODULE = __name__.rpartition(".")[0]


def swap_modules(model: nn.Module, matches, replacement) -> int:
    """Replace every submodule `m` with `matches(m)` by `replacement(m)`; returns the count."""
    swapped = 0
    for module in model.modules():
        for name, child in module.named_children():
            if matches(child):
                # the new module keeps the old one's train/eval mode (a fresh module starts in train mode)
                setattr(module, name, replacement(child).train(child.training))
                swapped += 1
    return swapped


@functools.cache
def _same_named_subclass(cls: type, forward, doc: str) -> type:
    # the same name: architectures.classify_body finds modules by class name, so parameter groups stay
    return type(cls.__name__, (cls,), {"forward": forward, "__module__": PATCHED_MODULE,
                                       "__doc__": f"{cls.__name__} {doc}"})


def swap_forward(model: nn.Module, classes: tuple[type, ...], forward_for, doc: str,
                 condition=lambda module: True) -> int:
    """Give every module of one of `classes` (and meeting `condition`) a same-named subclass whose forward is
    `forward_for(its class)`; returns the count. Modules patched already keep their forward."""
    swapped = 0
    for module in model.modules():
        cls = type(module)
        if isinstance(module, classes) and cls.__module__ != PATCHED_MODULE and condition(module):
            module.__class__ = _same_named_subclass(cls, forward_for(cls), doc)
            swapped += 1
    return swapped
