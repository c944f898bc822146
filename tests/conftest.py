"""Shared fixtures: tiny random checkpoints of every supported architecture (each row's `tiny_config` in
fpt/backbones/architectures.py), saved to disk.

They go through the same `from_pretrained(folder)` path as real weights, so the
GPT-2 code path is tested here although GPT-2's weights cannot be downloaded.
"""
from __future__ import annotations

import os

import pytest
import torch

from fpt.backbones.architectures import ARCHITECTURES

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# `precision: auto` is fp32 in tests on every kind of host (fpt/models/precision.py), child processes included, so
# that no test's numerics depend on whether this CPU has native bf16; tests of auto itself unset it
os.environ["FPT_AUTO_PRECISION"] = "fp32"
torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_collection_modifyitems(config, items):
    """`@pytest.mark.cpp_compiler` tests compile on the CPU (torch.compile writes C++): skipped where
    this machine has no C++ compiler, which fpt reports in one line instead."""
    marked = [item for item in items if item.get_closest_marker("cpp_compiler")]
    if not marked:
        return
    from fpt.run.experiment import missing_cpu_compiler

    if (missing := missing_cpu_compiler()) is not None:
        for item in marked:
            item.add_marker(pytest.mark.skip(reason=missing))


def save_tiny_checkpoint(model_type: str, folder) -> str:
    from transformers import AutoConfig, AutoModel

    torch.manual_seed(0)
    model = AutoModel.from_config(AutoConfig.for_model(model_type, **ARCHITECTURES[model_type].tiny_config),
                                  attn_implementation="eager")
    model.save_pretrained(folder)
    return str(folder)


def load_with_fast_ops(name: str, *, attn_implementation: str = "sdpa", **kwargs):
    """`load_backbone`, then fpt's faster modules for `attn_implementation` (fpt/models/bodies.py `use_fast_ops`), as
    a run builds its body."""
    from fpt.backbones import load_backbone
    from fpt.models.bodies import use_fast_ops

    backbone = load_backbone(name, attn_implementation=attn_implementation, **kwargs)
    use_fast_ops(backbone, attn_implementation)
    return backbone


@pytest.fixture(scope="session")
def tiny_backbones(tmp_path_factory) -> dict[str, str]:
    """model_type -> folder of a tiny random checkpoint."""
    return {t: save_tiny_checkpoint(t, tmp_path_factory.mktemp(f"tiny-{t}")) for t in ARCHITECTURES}


@pytest.fixture(params=sorted(ARCHITECTURES))
def tiny_backbone(request, tiny_backbones) -> str:
    return tiny_backbones[request.param]
