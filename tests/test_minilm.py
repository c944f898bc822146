"""The real embedded backbone, all-MiniLM-L6-v2 from PyPI."""
import pytest
import torch

from fpt.backbones import load_backbone
from fpt.config import TrainConfig
from fpt.model import count_parameters
from fpt.train import build_experiment, train


def test_minilm_loads_pretrained_and_groups():
    bb = load_backbone("minilm")
    assert (bb.num_layers, bb.width, bb.arch.model_type) == (6, 384, "bert")
    # pretrained, not random: the word embeddings match the shipped checkpoint's statistics
    assert abs(bb.model.embeddings.word_embeddings.weight.std().item() - 0.02) > 0.005
    exp = build_experiment(TrainConfig(task="bit-xor", backbone="minilm"))
    counts = {c.group: c for c in count_parameters(exp.model)}
    assert counts["layernorm"].total == 13 * 2 * 384  # embeddings LN + 2 per block
    assert counts["attention"].trainable == counts["feedforward"].trainable == 0


def test_minilm_fpt_learns_bit_xor(tmp_path):
    """Not a convergence run (that is `make demo`): 150 steps already beat chance by far."""
    torch.set_num_threads(2)
    result = train(TrainConfig(task="bit-xor", backbone="minilm", steps=150, eval_every=150,
                               run_dir=str(tmp_path / "r")), progress=False)
    assert result["test_accuracy"] > 0.7
