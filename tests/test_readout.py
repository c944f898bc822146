"""The last block computed at the read-out tokens only (fpt/backbones/readout.py) gives the full model's numbers."""
from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import load_with_fast_ops

from fpt import fastops
from fpt.backbones import load_backbone
from fpt.backbones.architectures import ARCHITECTURES
from fpt.models.model import apply_trainable, build_fpt
from fpt.tasks.base import TaskSpec

SPECS = {
    "one token": TaskSpec("t", "continuous", seq_len=12, num_classes=3, token_dim=5),
    "last 4 tokens": TaskSpec("t", "continuous", seq_len=12, num_classes=2, token_dim=5, output_tokens=4),
    "padded": TaskSpec("t", "tokens", seq_len=12, num_classes=3, vocab_size=9, output_tokens=2, padded=True),
    # longer than the tiny Gemma's sliding window of 16
    "24 tokens, last 4": TaskSpec("t", "continuous", seq_len=24, num_classes=2, token_dim=5, output_tokens=4),
    "24 tokens, padded": TaskSpec("t", "tokens", seq_len=24, num_classes=3, vocab_size=9, output_tokens=2,
                                  padded=True),
}

#: the architectures whose last block runs at the read-out rows (a `row_block` in their row)
READS_ROWS = sorted(name for name, arch in ARCHITECTURES.items() if arch.row_block is not None)


def _pair(folder: str, spec: TaskSpec, attn: str):
    """The same FPT model twice: last block at the read-out rows, and in full."""
    models = []
    for at_rows in (True, False):
        torch.manual_seed(0)
        model = build_fpt(load_with_fast_ops(folder, dropout=0.0, attn_implementation=attn), spec, at_rows)
        apply_trainable(model, ("input", "output", "positions", "layernorm"))
        models.append(model)
    return models


def _inputs(spec: TaskSpec):
    g = torch.Generator().manual_seed(1)
    if spec.input_kind == "tokens":
        x = torch.randint(1, spec.vocab_size, (3, spec.seq_len), generator=g)
        lengths = torch.tensor([spec.seq_len, 7, 3])
        x[torch.arange(spec.seq_len) >= lengths.unsqueeze(1)] = 0
        return x, lengths
    return torch.randn(3, spec.seq_len, spec.token_dim, generator=g), None


@pytest.mark.parametrize("attn", ["eager", "sdpa", fastops.FPT_CPU, "fpt_cpu-fused"])
@pytest.mark.parametrize("spec_name", sorted(SPECS))
@pytest.mark.parametrize("model_type", READS_ROWS)
def test_rows_match_full_last_block(tiny_backbones, model_type, spec_name, attn):
    with contextlib.ExitStack() as switches:
        if attn == "fpt_cpu-fused":  # fpt's CPU attention on its fused-kernel path (K queries, T keys)
            switches.enter_context(fastops.fused_sdpa_from(1))
            attn = fastops.FPT_CPU
        spec = SPECS[spec_name]
        at_rows, full = _pair(tiny_backbones[model_type], spec, attn)
        assert at_rows.body.reads_rows and not full.body.reads_rows
        x, lengths = _inputs(spec)
        out_rows, out_full = at_rows(x, lengths), full(x, lengths)
        assert out_rows.shape == out_full.shape == (3, spec.num_targets, spec.num_classes)
        torch.testing.assert_close(out_rows, out_full, atol=1e-5, rtol=1e-5)
        out_rows.square().sum().backward()
        out_full.square().sum().backward()
        grads = {n: p.grad for n, p in full.named_parameters() if p.requires_grad}
        for name, p in at_rows.named_parameters():
            if p.requires_grad:
                torch.testing.assert_close(p.grad, grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_every_architecture_reads_rows_and_an_uncovered_config_runs_the_full_block(tiny_backbones):
    for model_type, folder in tiny_backbones.items():
        model = build_fpt(load_backbone(folder, dropout=0.0), SPECS["one token"])
        assert model.body.reads_rows == (model_type in READS_ROWS)
        assert model(torch.randn(2, 12, 5)).shape == (2, 1, 3)
    backbone = load_backbone(tiny_backbones["gpt2"], dropout=0.0, attn_implementation="eager")
    backbone.model.config.reorder_and_upcast_attn = True  # eager's fp32 path, which the row block does not take
    model = build_fpt(backbone, SPECS["one token"])
    assert not model.body.reads_rows
    assert model(torch.randn(2, 12, 5)).shape == (2, 1, 3)


def test_rows_are_reset_after_a_failed_forward(tiny_backbones):
    model = build_fpt(load_backbone(tiny_backbones["bert"], dropout=0.0), SPECS["one token"])
    with pytest.raises(RuntimeError):
        model(torch.randn(2, 12, 4))  # wrong token width: fails in the input layer
    with pytest.raises(RuntimeError):
        model.body(torch.randn(2, 12, 7), None, torch.zeros(2, 1, dtype=torch.long))  # wrong hidden width
    assert model.body.last_block.fpt_rows is None


@pytest.mark.parametrize("model_type", READS_ROWS)
def test_rows_keep_lora_adapters(tiny_backbones, model_type):
    """LoRA adapters on the last block's layers (attention and feed-forward) take part at the read rows."""
    from fpt.models.lora import add_lora

    spec = SPECS["last 4 tokens"]
    models = []
    for at_rows in (True, False):
        torch.manual_seed(0)
        backbone = load_with_fast_ops(tiny_backbones[model_type], dropout=0.0, attn_implementation=fastops.FPT_CPU)
        model = build_fpt(backbone, spec, at_rows)
        add_lora(model.body.model, backbone.arch, r=2, targets=("attention", "feedforward"))
        torch.manual_seed(1)  # peft starts B at zero, where a skipped adapter would not show
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.5)
        apply_trainable(model, ("input", "output", "lora"))
        models.append(model)
    x, _ = _inputs(spec)
    out_rows, out_full = models[0](x), models[1](x)
    torch.testing.assert_close(out_rows, out_full, atol=1e-5, rtol=1e-5)
    out_rows.square().sum().backward()
    out_full.square().sum().backward()
    grads = {n: p.grad for n, p in models[1].named_parameters() if p.requires_grad}
    assert any("lora_B" in n for n in grads)
    for name, p in models[0].named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, grads[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("model_type", READS_ROWS)
def test_attention_maps_see_the_whole_last_block(tiny_backbones, model_type, tmp_path):
    """An experiment that reads rows still gives every layer's full (T, T) map: the maps run the last block
    at every token."""
    from fpt.paper.attention import attention_maps
    from fpt.core.config import TrainConfig
    from fpt.run.experiment import build_experiment

    exp = build_experiment(TrainConfig(task="bit-xor", backbone=tiny_backbones[model_type],
                                       attn_implementation="eager", run_dir=str(tmp_path)))
    assert exp.model.body.reads_rows
    maps = attention_maps(exp, exp.data.train_batch(4, torch.Generator().manual_seed(0)).x)
    layers = len(exp.model.body.model.get_submodule(exp.model.body.arch.layers))
    assert maps.shape[0] == layers and maps.shape[-2:] == (10, 10)  # bit-xor: 10 tokens
    torch.testing.assert_close(maps.sum(-1), torch.ones(maps.shape[:-1]))
    assert exp.model.body.reads_rows  # back on afterwards
