"""Parameter groups: every parameter classified, counts right, freezing exact."""
import pytest
import torch

from fpt.backbones import load_backbone
from fpt.backbones.architectures import GROUPS, TRAINABLE_GROUPS
from fpt.core.config import TrainConfig
from fpt.models.model import apply_trainable, build_fpt, count_parameters, parameter_groups, parse_groups
from fpt.tasks import build_task
from fpt.run.experiment import build_experiment
from fpt.run.step import loss_and_correct


def _model(backbone, task="bit-xor", init="random"):
    spec = build_task(task).spec
    return build_fpt(load_backbone(backbone, init=init, dropout=0.0), spec)


def test_every_parameter_has_one_group(tiny_backbone):
    model = _model(tiny_backbone)
    groups = parameter_groups(model)
    assert set(groups) == {n for n, _ in model.named_parameters()}
    assert set(groups.values()) <= set(GROUPS)
    for needed in ("input", "output", "positions", "layernorm", "attention", "feedforward", "unused"):
        assert needed in groups.values()


def test_gpt2_small_counts():
    """The paper's GPT-2 small, built offline from its sizes (random weights)."""
    counts = {c.group: c for c in count_parameters(_model("gpt2"))}
    assert counts["layernorm"].total == 38_400
    assert counts["positions"].total == 1024 * 768
    assert counts["attention"].total == 12 * (768 * 3 * 768 + 3 * 768 + 768 * 768 + 768)
    assert counts["feedforward"].total == 12 * (768 * 3072 + 3072 + 3072 * 768 + 768)
    assert counts["unused"].total == 50257 * 768


def test_fpt_default_freezes_attention_and_feedforward():
    model = _model("gpt2")
    apply_trainable(model, parse_groups("fpt"))
    counts = {c.group: c for c in count_parameters(model)}
    assert counts["attention"].trainable == 0 and counts["feedforward"].trainable == 0
    assert counts["unused"].trainable == 0
    assert counts["layernorm"].trainable == 38_400
    assert counts["positions"].trainable == 10 * 768  # bit-xor uses 10 of the 1024 rows


@pytest.mark.parametrize("train", ["fpt", "output", "output,layernorm", "fpt,feedforward",
                                   "fpt,attention", "all"])
@pytest.mark.parametrize("task", ["bit-xor", "bit-memory"])
def test_only_named_groups_change(tiny_backbone, task, train, tmp_path):
    cfg = TrainConfig(task=task, backbone=tiny_backbone, init="pretrained", train=train, dropout=0.0,
                      run_dir=str(tmp_path))
    exp = build_experiment(cfg)
    groups = parameter_groups(exp.model)
    before = {n: p.detach().clone() for n, p in exp.model.named_parameters()}
    opt = torch.optim.Adam(exp.trainable, lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        batch = exp.data.train_batch(4, gen)
        loss, _ = loss_and_correct(exp.model(batch.x, batch.lengths), batch.y)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        for n, p in exp.model.named_parameters():
            assert (p.grad is not None) == (groups[n] in cfg.train and p.requires_grad), n
        opt.step()
    for n, p in exp.model.named_parameters():
        if groups[n] in cfg.train:
            if groups[n] != "positions":  # only the used rows move; checked below
                assert not torch.equal(p, before[n]), f"{n} ({groups[n]}) should have trained"
        else:
            assert torch.equal(p, before[n]), f"{n} ({groups[n]}) is frozen but changed"


def test_parse_groups():
    assert parse_groups("fpt") == ("input", "output", "positions", "layernorm")
    assert parse_groups("all") == TRAINABLE_GROUPS
    assert parse_groups("layernorm,output") == ("output", "layernorm")
    assert parse_groups("none") == ()
