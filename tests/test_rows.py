"""Every model row of the paper (and LoRA, and output-only from a feature cache) on tiny models.

Each row trains a few steps on Bit XOR: its test loss drops, the groups it trains
move, and every frozen weight stays bit-identical.
"""
import re

import pytest
import torch

from fpt.backbones import load_backbone, redraw_from_statistics
from fpt.cli import main
from fpt.core.config import TrainConfig
from fpt.core.errors import FPTError
from fpt.models.model import count_parameters, parameter_groups
from fpt.run.experiment import build_experiment
from fpt.run.launch import train
from fpt.run.step import evaluate, loss_and_correct

ROWS = {
    "fpt": dict(),
    "random": dict(init="random"),
    "stats": dict(init="stats"),
    "full-transformer": dict(init="random", train="all", layers=1),
    "full-finetune": dict(init="pretrained", train="all"),
    "lstm": dict(model="lstm", layers=1, lr=1e-3),
    "lora": dict(lora_r=4, lora_targets="attention,feedforward"),
    "output-cache": dict(train="output", cache_features=True),
}


def _cfg(backbone, tmp_path, **kw):
    base = dict(task="bit-xor", backbone=backbone, dropout=0.0, lr=3e-3, steps=30, batch_size=32,
                eval_every=30, run_dir=str(tmp_path / "run"))
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("row", ROWS)
def test_row_learns_and_keeps_frozen_weights(row, tiny_backbones, tmp_path, monkeypatch):
    monkeypatch.setattr("fpt.models.bodies.LSTM_WIDTH", 64)  # the paper's 768 is tested by `describe` below
    cfg = _cfg(tiny_backbones["gpt2"], tmp_path, **ROWS[row])
    exp = build_experiment(cfg)
    groups = parameter_groups(exp.model)
    before = {n: p.detach().clone() for n, p in exp.model.named_parameters()}
    start = evaluate(exp, "test")["loss"]
    opt = torch.optim.Adam(exp.trainable, lr=cfg.lr)
    gen = torch.Generator().manual_seed(0)
    for _ in range(cfg.steps):
        batch = exp.data.train_batch(cfg.batch_size, gen)
        loss, _ = loss_and_correct(exp.logits(batch.x, batch.lengths), batch.y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert evaluate(exp, "test")["loss"] < start - 0.01, "the row did not learn"
    for n, p in exp.model.named_parameters():
        if groups[n] in cfg.train:
            if groups[n] != "positions":  # only the rows a task uses move
                assert not torch.equal(p, before[n]), f"{n} ({groups[n]}) should have trained"
        else:
            assert torch.equal(p, before[n]), f"{n} ({groups[n]}) is frozen but changed"
    if row == "output-cache":
        assert exp.cache.computed <= 1024 + 2000  # Bit XOR has 1024 distinct inputs; val + test rows


def _describe(capsys, *argv) -> dict[str, tuple[int, int]]:
    assert main(["describe", "--task", "bit-xor", *argv]) == 0
    out = capsys.readouterr().out
    return {g: (int(t.replace(",", "")), int(r.replace(",", "")))
            for g, t, r in re.findall(r"^(\w+) +([\d,]+) +([\d,]+)$", out, re.M)}


@pytest.mark.parametrize("row", ROWS)
def test_describe_counts_each_row(row, tiny_backbones, capsys):
    kw = ROWS[row]
    argv = ["--backbone", tiny_backbones["gpt2"]]
    for k, v in kw.items():
        if k != "lr":
            flag = k.replace("_", "-")
            argv += [f"--{flag}" if v else f"--no-{flag}"] if isinstance(v, bool) else [f"--{flag}", str(v)]
    counts = _describe(capsys, *argv)
    cfg = TrainConfig(**{k: v for k, v in kw.items()})
    for group, (total, trainable) in counts.items():
        if group == "all":
            continue
        if group in cfg.train and group != "positions":
            assert trainable == total, group
        elif group not in cfg.train:
            assert trainable == 0, group
    d = 64  # the tiny GPT-2's width, 2 blocks
    if row == "lstm":
        lstm_layer = 4 * 768 * (2 * 768 + 2)  # weight_ih, weight_hh, two biases; one layer kept
        assert counts["recurrent"] == (lstm_layer, lstm_layer)
        assert all(total == trainable for total, trainable in counts.values())
    elif row == "full-transformer":
        assert counts["attention"][0] == 1 * (d * 3 * d + 3 * d + d * d + d)  # one block kept
    elif row == "lora":  # r=4 on c_attn, c_proj (attention), c_fc, c_proj (feed-forward), 2 blocks
        assert counts["lora"] == (2 * 4 * ((d + 3 * d) + (d + d) + (d + 4 * d) + (4 * d + d)),) * 2
    elif row == "output-cache":
        assert sum(trainable for _, trainable in counts.values()) == counts["output"][1] == d * 2 + 2
    else:
        assert counts["positions"] == (64 * d, 10 * d)


def test_init_stats_keeps_each_tensors_statistics(tiny_backbones):
    a = load_backbone(tiny_backbones["bert"], init="pretrained").model
    b = load_backbone(tiny_backbones["bert"], init="pretrained").model
    redraw_from_statistics(b, seed=0)
    checked = 0
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        if p.numel() < 1000 or p.std() == 0:
            continue
        assert not torch.equal(p, q), name
        assert abs(q.mean() - p.mean()) < 0.1 * p.std() + 1e-3, name
        assert abs(q.std() / p.std() - 1) < 0.1, name
        checked += 1
    assert checked >= 8
    stats = load_backbone(tiny_backbones["bert"], init="stats", seed=0).model
    assert all(torch.equal(p, q) for p, q in zip(b.parameters(), stats.parameters()))


def test_output_only_cache_matches_training_through_the_model(tiny_backbones, tmp_path):
    kw = dict(train="output", steps=60, eval_every=60, batch_size=16, lr=1e-2)
    through = train(_cfg(tiny_backbones["bert"], tmp_path / "a", **kw), progress=False)
    cached = train(_cfg(tiny_backbones["bert"], tmp_path / "b", cache_features=True, **kw), progress=False)
    assert abs(through["test_accuracy"] - cached["test_accuracy"]) <= 0.005
    assert cached["features_computed"] <= 1024 + 2000


def test_bit_pretrained_backbone_export_and_reuse(tiny_backbones, tmp_path):
    """The paper's "Bit" row: train the architecture on Bit Memory, save it, use it frozen."""
    folder = tmp_path / "bit-gpt2"
    cfg = _cfg(tiny_backbones["gpt2"], tmp_path, task="bit-memory", init="random", train="all", steps=2,
               batch_size=4, eval_every=2, export_backbone=str(folder))
    result = train(cfg, progress=False)
    assert result["exported_backbone"] == str(folder) and (folder / "config.json").exists()
    trained = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["trainable"]
    exp = build_experiment(_cfg(str(folder), tmp_path / "reuse", steps=1))
    body = dict(exp.model.named_parameters())
    assert torch.equal(body["body.model.h.0.attn.c_attn.weight"], trained["body.model.h.0.attn.c_attn.weight"])
    assert not body["body.model.h.0.attn.c_attn.weight"].requires_grad


@pytest.mark.parametrize("kw,match", [
    (dict(cache_features=True), "cache_features needs --train output"),
    (dict(lora_r=4, train="fpt"), "lora group"),
    (dict(lora_targets="attention,wings"), "lora_targets"),
    (dict(model="gru"), "unknown model 'gru'"),
    (dict(model="lstm", export_backbone="x"), "export_backbone"),
])
def test_bad_row_configs(kw, match):
    with pytest.raises(FPTError, match=match):
        TrainConfig(**kw)


def test_layers_out_of_range(tiny_backbones, tmp_path):
    with pytest.raises(FPTError, match="layers must be between 1 and 2"):
        build_experiment(_cfg(tiny_backbones["gpt2"], tmp_path, layers=3))
