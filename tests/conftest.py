"""Shared fixtures: tiny random checkpoints of every supported architecture, saved to disk.

They go through the same `from_pretrained(folder)` path as real weights, so the
GPT-2 code path is tested here although GPT-2's weights cannot be downloaded.
"""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# `precision: auto` is fp32 in tests on every kind of host (fpt/precision.py), child processes included, so
# that no test's numerics depend on whether this CPU has native bf16; tests of auto itself unset it
os.environ["FPT_AUTO_PRECISION"] = "fp32"
torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_collection_modifyitems(config, items):
    """`@pytest.mark.cpp_compiler` tests compile on the CPU (torch.compile writes C++): skipped where
    this machine has no C++ compiler, which fpt reports in one line instead."""
    marked = [item for item in items if item.get_closest_marker("cpp_compiler")]
    if not marked:
        return
    from fpt.train import missing_cpu_compiler

    if (missing := missing_cpu_compiler()) is not None:
        for item in marked:
            item.add_marker(pytest.mark.skip(reason=missing))

TINY_CONFIGS = {
    # initializer_range 0.1 (not 0.02): a model this small needs larger random weights for its
    # frozen attention to single out positions at all.
    "gpt2": dict(n_layer=2, n_head=2, n_embd=64, n_positions=64, vocab_size=100, initializer_range=0.1,
                 bos_token_id=0, eos_token_id=0),
    "bert": dict(num_hidden_layers=2, num_attention_heads=2, hidden_size=64, intermediate_size=128,
                 max_position_embeddings=64, vocab_size=100, initializer_range=0.1),
    "mpnet": dict(num_hidden_layers=2, num_attention_heads=2, hidden_size=64, intermediate_size=128,
                  max_position_embeddings=66, vocab_size=100, initializer_range=0.1),
    "gemma3_text": dict(num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                        hidden_size=64, intermediate_size=128, max_position_embeddings=256, vocab_size=100,
                        sliding_window=16, layer_types=["sliding_attention", "full_attention"],
                        initializer_range=0.1),
    # 2 x 2 patches of a 32 x 32 image: ViT's own 5-row position table, which FPT does not use
    "vit": dict(num_hidden_layers=2, num_attention_heads=2, hidden_size=64, intermediate_size=128,
                image_size=32, patch_size=16, initializer_range=0.1),
}


def save_tiny_checkpoint(model_type: str, folder) -> str:
    from transformers import AutoConfig, AutoModel

    torch.manual_seed(0)
    model = AutoModel.from_config(AutoConfig.for_model(model_type, **TINY_CONFIGS[model_type]),
                                  attn_implementation="eager")
    model.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_backbones(tmp_path_factory) -> dict[str, str]:
    """model_type -> folder of a tiny random checkpoint."""
    return {t: save_tiny_checkpoint(t, tmp_path_factory.mktemp(f"tiny-{t}")) for t in TINY_CONFIGS}


@pytest.fixture(params=sorted(TINY_CONFIGS))
def tiny_backbone(request, tiny_backbones) -> str:
    return tiny_backbones[request.param]
