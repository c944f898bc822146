"""fpt's CPU fast path (fpt/fastops.py): the same math as transformers' eager attention and torch's dropout."""
import pytest
import torch

from fpt.backbones import load_backbone
from fpt.fastops import FAST_EAGER, FastDropout, fast_dropout, keep_mask


def test_keep_mask_is_bernoulli_with_the_right_rate():
    torch.manual_seed(0)
    keep = keep_mask(torch.Size((1000, 1001)), 0.1, torch.device("cpu"))  # odd size: lanes of a partial word
    assert keep.shape == (1000, 1001) and keep.dtype == torch.bool
    assert keep.float().mean().item() == pytest.approx(0.9, abs=0.002)
    # each of the four 16-bit lanes of a 64-bit draw is unbiased (a lane stuck at 0 or 1 would show)
    lanes = keep.flatten()[: 4 * 250_000].view(-1, 4).float().mean(0)
    assert torch.allclose(lanes, torch.full((4,), 0.9), atol=0.003)


def test_fast_dropout_scales_and_is_identity_in_eval():
    x = torch.ones(200_000)
    y = fast_dropout(x, 0.25, training=True)
    assert torch.isin(y.unique(), torch.tensor([0.0, 1 / 0.75])).all()
    assert y.mean().item() == pytest.approx(1.0, abs=0.01)  # expectation preserved
    assert fast_dropout(x, 0.25, training=False) is x
    x.requires_grad_(True)
    fast_dropout(x, 0.25, training=True).sum().backward()
    assert torch.isin(x.grad.unique(), torch.tensor([0.0, 1 / 0.75])).all()


@pytest.mark.parametrize("model_type", ["bert", "vit", "gpt2"])
def test_fast_path_matches_eager_without_dropout(tiny_backbones, model_type):
    """In eval mode (no dropout) the fast path computes exactly what transformers' eager attention does."""
    from fpt.model import HFBody

    x = torch.randn(3, 10, 64)
    outs = {}
    for attn in ("eager", FAST_EAGER):
        backbone = load_backbone(tiny_backbones[model_type], attn_implementation=attn)
        torch.manual_seed(0)  # ViT's new position table is drawn here
        body = HFBody(backbone, 10).eval()
        outs[attn] = body(x)
        dropouts = [m for m in body.modules() if isinstance(m, torch.nn.Dropout)]
        assert all(isinstance(m, FastDropout) for m in dropouts) == (attn == FAST_EAGER)
    torch.testing.assert_close(outs[FAST_EAGER], outs["eager"], rtol=1e-5, atol=1e-5)
