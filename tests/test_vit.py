"""The ViT row (paper Table 2): transformers' ViTModel blocks with a new learned position table.

The tiny checkpoint comes from the architecture's `tiny_config`, so test_groups.py already runs the freezing
matrix over it; here: what is special about ViT (no `inputs_embeds`: FPT runs its blocks and final
norm itself), hub-format checkpoints, padding masks, attention maps, the offline Random row.
"""
import pytest
import torch
from safetensors.torch import save_file

from fpt.paper.attention import attention_maps
from fpt.backbones import VIT_CONFIG, load_backbone
from fpt.cli import main
from fpt.core.config import TrainConfig
from fpt.core.errors import FPTError
from fpt.models.bodies import HFBody
from fpt.models.model import build_fpt, count_parameters, parameter_groups
from fpt.tasks import build_task
from fpt.run.experiment import build_experiment
from fpt.run.launch import train
from fpt.run.step import loss_and_correct


def _model(folder, task="bit-xor", **kw):
    return build_fpt(load_backbone(folder, init="pretrained", dropout=0.0, **kw), build_task(task).spec)


def test_vit_groups(tiny_backbones):
    model = _model(tiny_backbones["vit"])
    groups = parameter_groups(model)
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert groups[f"body.model.layers.0.attention.{proj}.weight"] == "attention"
    assert groups["body.model.layers.1.mlp.fc1.weight"] == "feedforward"
    assert groups["body.model.layers.1.mlp.fc2.bias"] == "feedforward"
    assert groups["body.model.layers.0.layernorm_before.weight"] == "layernorm"
    assert groups["body.model.layers.0.layernorm_after.bias"] == "layernorm"
    assert groups["body.model.layernorm.weight"] == "layernorm"
    for name in ("embeddings.cls_token", "embeddings.position_embeddings",
                 "embeddings.patch_embeddings.projection.weight"):
        assert groups[f"body.model.{name}"] == "unused"
    assert not any(".pooler." in n for n in groups)  # built without the pooler
    assert groups["body.positions.weight"] == "positions"  # FPT's own table, one row per token
    assert model.body.positions.weight.shape == (10, 64)
    counts = {c.group: c for c in count_parameters(model)}
    assert counts["positions"].total == 10 * 64
    assert counts["layernorm"].total == 2 * 2 * 2 * 64 + 2 * 64
    assert counts["unused"].total == 3 * 16 * 16 * 64 + 64 + 64 + 5 * 64  # conv, cls, 2 x 2 + 1 positions


def test_blocks_match_vit_forward(tiny_backbones):
    """FPT's path (blocks, then the final norm) is ViTModel's own forward after its embedding."""
    vit = load_backbone(tiny_backbones["vit"], init="pretrained", dropout=0.0, attn_implementation="eager")
    vit.model.eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = vit.model(pixel_values=pixels).last_hidden_state  # (2, 5, 64)
        body = HFBody(vit, seq_len=5).eval()
        body.positions = None  # ViT's own embedding output already holds its positions
        ours = body(vit.model.embeddings(pixels))
    torch.testing.assert_close(ours, ref)


def test_eager_and_sdpa_agree(tiny_backbones):
    x = torch.randn(3, 10, 1)
    outs = []
    for impl in ("eager", "sdpa"):
        torch.manual_seed(0)
        model = _model(tiny_backbones["vit"], attn_implementation=impl).eval()
        assert model.body.model.config._attn_implementation == impl
        with torch.no_grad():
            outs.append(model(x))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_padding_is_masked(tiny_backbones, impl):
    """Padded tasks (listops, homology): what sits after a sequence's end does not change its output."""
    torch.manual_seed(0)
    model = _model(tiny_backbones["vit"], task="listops", attn_implementation=impl).eval()
    ids = torch.randint(1, model.spec.vocab_size, (1, 12))
    padded = torch.cat([ids, torch.randint(1, model.spec.vocab_size, (1, 6))], 1)  # (1, 18), junk after 12
    with torch.no_grad():
        alone = model(ids, torch.tensor([12]))
        batched = model(padded.repeat(2, 1), torch.tensor([12, 18]))
    torch.testing.assert_close(batched[:1], alone, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(batched[1:], alone)


def test_training_keeps_frozen_weights_bit_identical(tiny_backbones, tmp_path):
    cfg = TrainConfig(task="bit-xor", backbone=tiny_backbones["vit"], dropout=0.0, run_dir=str(tmp_path))
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
        for n, p in exp.model.named_parameters():
            assert (p.grad is not None) == (groups[n] in cfg.train), n
        opt.step()
    for n, p in exp.model.named_parameters():
        if groups[n] in ("attention", "feedforward", "unused"):
            assert torch.equal(p, before[n]), n
        else:  # input, output, layernorm and the new position table
            assert not torch.equal(p, before[n]), n


def test_tiny_random_vit_learns_bit_xor(tiny_backbones, tmp_path):
    """As GPT-2's test in test_train.py: frozen random blocks, FPT's groups, Bit XOR solved."""
    cfg = TrainConfig(task="bit-xor", backbone=tiny_backbones["vit"], init="pretrained", steps=600,
                      batch_size=32, eval_every=100, lr=3e-3, early_stop=1.0, run_dir=str(tmp_path / "run"))
    result = train(cfg, progress=False)
    assert result["test_accuracy"] == 1.0


def test_attention_maps_under_eager(tiny_backbones, tmp_path):
    cfg = TrainConfig(task="bit-xor", backbone=tiny_backbones["vit"], attn_implementation="eager",
                      run_dir=str(tmp_path))
    exp = build_experiment(cfg)
    maps = attention_maps(exp, exp.data.train_batch(4, torch.Generator().manual_seed(0)).x)
    assert maps.shape == (2, 2, 10, 10)  # (layers, heads, T, T)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 2, 10))


def _hub_format(model) -> dict[str, torch.Tensor]:
    """A ViTModel's weights named as google/vit-base-patch16-224 names them (a ViTForImageClassification
    checkpoint of transformers 4: `vit.` prefix, `encoder.layer.N.attention.attention.query`, ...)."""
    renames = [("layers.", "encoder.layer."), ("attention.q_proj", "attention.attention.query"),
               ("attention.k_proj", "attention.attention.key"), ("attention.v_proj", "attention.attention.value"),
               ("attention.o_proj", "attention.output.dense"), ("mlp.fc1", "intermediate.dense"),
               ("mlp.fc2", "output.dense")]
    out = {}
    for name, t in model.state_dict().items():
        if name.startswith("pooler."):
            continue  # the classification checkpoint has a classifier instead
        for new, old in renames:
            name = name.replace(new, old)
        out[f"vit.{name}"] = t.clone().contiguous()
    out["classifier.weight"] = torch.zeros(7, model.config.hidden_size)
    out["classifier.bias"] = torch.zeros(7)
    return out


def test_hub_format_checkpoint_loads_every_weight(tiny_backbones, tmp_path):
    """The pretrained path: old-format hub weights are renamed on load, none left at random init."""
    src = load_backbone(tiny_backbones["vit"], init="pretrained")
    folder = tmp_path / "vit-hub-format"
    folder.mkdir()
    config = src.model.config.to_dict()
    config.update(architectures=["ViTForImageClassification"], id2label={str(i): str(i) for i in range(7)})
    (folder / "config.json").write_text(__import__("json").dumps(config))
    save_file(_hub_format(src.model), str(folder / "model.safetensors"))
    loaded = load_backbone(str(folder), init="pretrained")
    assert loaded.weights_sha256() == src.weights_sha256()


def test_registry_name_random_builds_offline(monkeypatch):
    """The Random row: `--backbone vit --init random` from the literal config, no download."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("FPT_VIT_PATH", raising=False)
    bb = load_backbone("vit", init="random")
    assert (bb.arch.model_type, bb.num_layers, bb.width, bb.source) == ("vit", 12, 768,
                                                                         "google/vit-base-patch16-224")
    assert bb.model.config.intermediate_size == VIT_CONFIG["intermediate_size"] == 3072
    assert bb.model.pooler is None
    with pytest.raises(FPTError, match="weights for backbone 'vit'.*not available offline"):
        load_backbone("vit", init="pretrained")


def test_registry_name_reads_local_folder(tiny_backbones, monkeypatch):
    monkeypatch.setenv("FPT_VIT_PATH", tiny_backbones["vit"])
    bb = load_backbone("vit", init="pretrained")
    assert (bb.width, bb.source) == (64, tiny_backbones["vit"])


def test_describe_says_positions_are_new(tiny_backbones, capsys):
    assert main(["describe", "--backbone", tiny_backbones["vit"], "--task", "bit-xor"]) == 0
    out = capsys.readouterr().out
    assert "197 image tokens" in out and "new learned positional embedding (10 x 64)" in out
