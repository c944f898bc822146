"""fpt's CPU fast path (fpt/fastops): the same math as transformers' eager attention and torch's dropout."""
import os
import shutil
from types import SimpleNamespace

import pytest
import torch
from conftest import load_with_fast_ops

from fpt.backbones import load_backbone
from fpt.backbones.architectures import ARCHITECTURES
from fpt import fastops as fo
from fpt.fastops import native
from fpt.fastops import FPT_CPU, FastDropout, fast_dropout, hash_dropout, hash_keep_mask
from fpt.fastops.projected_attention import ProjectedShortAttention, projections_fuse
from fpt.fastops.short_attention_kernel import SHORT_ATTENTION

# the autograd nodes of short attention's kernel (eager) and of BERT's projected attention
SHORT_ATTENTION_NODE = f"{SHORT_ATTENTION.eager.__name__}Backward"
PROJECTED_ATTENTION_NODE = f"{ProjectedShortAttention.__name__}Backward"


def _autograd_nodes(out: torch.Tensor) -> set[str]:
    """The names of the autograd nodes `out` was computed through."""
    names, todo, seen = set(), [out.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        todo += [next_node for next_node, _ in node.next_functions]
    return names

#: the architectures whose own eager attention fpt's CPU attention stands in for
CPU_ATTENTION = sorted(name for name, arch in ARCHITECTURES.items() if arch.standard_eager)


def test_hash_keep_mask_is_bernoulli_with_independent_neighbours():
    keep = hash_keep_mask(torch.Size((1000, 1001)), seed=7, p=0.1)
    assert keep.shape == (1000, 1001) and keep.dtype == torch.bool
    flat = keep.flatten().float()
    assert flat.mean().item() == pytest.approx(0.9, abs=0.002)
    # neighbours (consecutive counters) and a row apart are independent: joint rate (1 - p)^2
    for gap in (1, 1001):
        assert (flat[:-gap] * flat[gap:]).mean().item() == pytest.approx(0.81, abs=0.003)
    # nearby seeds give unrelated masks, not shifted copies
    other = hash_keep_mask(torch.Size((1000, 1001)), seed=8, p=0.1).flatten().float()
    assert (flat * other).mean().item() == pytest.approx(0.81, abs=0.003)
    assert torch.equal(hash_keep_mask(torch.Size((99,)), -1, 0.5), hash_keep_mask(torch.Size((99,)), 2**64 - 1, 0.5))
    assert hash_keep_mask(torch.Size((50,)), seed=7, p=0.0).all() and not hash_keep_mask(torch.Size((50,)), 7, 1.0).any()


@pytest.fixture(params=["native", "torch"])
def dropout_impl(request, monkeypatch):
    """fpt's CPU dropout both ways: the built C kernel, and the torch form it falls back to."""
    if request.param == "native":
        if shutil.which(os.environ.get("CC") or "cc") is None:
            pytest.skip("no C compiler to build fpt's CPU kernels")
        assert native.kernels("hash_dropout") is not None, "the C kernel did not build"
    else:
        monkeypatch.setattr(native, "kernels", lambda name: None)
    return request.param


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scale", [1.0, 1 / 0.9])
@pytest.mark.parametrize("shape", [(7,), (3, 12, 64, 64), (5, 3)])
def test_hash_dropout_is_its_torch_reference(dropout_impl, dtype, scale, shape):
    """Bit for bit `torch.where(hash_keep_mask, x * scale, 0)`, the C kernel as much as the torch form:
    odd sizes, and sizes below and above the kernel's threshold for a second thread."""
    x = torch.randn(shape).to(dtype)
    for seed in (0, 123456789123, 2**63 - 2):
        assert torch.equal(hash_dropout(x, torch.tensor(seed), 0.1, scale),
                           torch.where(hash_keep_mask(x.shape, seed, 0.1), x * scale, 0.0))


def test_hash_dropout_reads_any_layout(dropout_impl):
    x = torch.randn(4, 5, 6).transpose(0, 2)  # not contiguous: elements in row-major order of the view
    out = hash_dropout(x, torch.tensor(5), 0.3, 2.0)
    assert out.is_contiguous() and torch.equal(out, torch.where(hash_keep_mask(x.shape, 5, 0.3), x * 2.0, 0.0))


def test_dropout_follows_torchs_seed(dropout_impl):
    """torch.manual_seed repeats the masks, each call draws a new one, and the backward drops the same
    elements as the forward (the mask recomputed from the seed the forward drew)."""
    x = torch.ones(50_000, requires_grad=True)
    torch.manual_seed(3)
    first, second = fast_dropout(x, 0.1, True), fast_dropout(x, 0.1, True)
    torch.manual_seed(3)
    again = fast_dropout(x, 0.1, True)
    assert torch.equal(again, first) and not torch.equal(first, second)
    again.backward(torch.full_like(x, 2.0))
    assert torch.equal(x.grad, again.detach() * 2.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_add_is_dropout_then_add(dropout_impl, dtype):
    """The fused dropout + residual add (one C pass, and one for its backward) gives what dropout followed
    by the add gives, forward and both gradients, bit for bit; eager and the custom op alike."""
    from fpt.fastops import fast_dropout_add, hash_dropout_add

    h = torch.randn(3, 64, 48).to(dtype).requires_grad_()
    r = torch.randn(3, 64, 48, requires_grad=True)
    h2, r2 = h.detach().clone().requires_grad_(), r.detach().clone().requires_grad_()
    torch.manual_seed(5)
    fused = fast_dropout_add(h, r, 0.1, True)
    torch.manual_seed(5)
    unfused = fast_dropout(h2, 0.1, True) + r2
    grad = torch.randn_like(fused)
    fused.backward(grad)
    unfused.backward(grad)
    assert fused.dtype == torch.float32 and torch.equal(fused, unfused)
    assert torch.equal(h.grad, h2.grad) and torch.equal(r.grad, r2.grad)
    h3 = h.detach().clone().requires_grad_()
    torch.manual_seed(5)
    op = hash_dropout_add(h3, r.detach(), fo.dropout_seed(h3), 0.1, 1 / 0.9)
    op.backward(grad)
    assert torch.equal(op, fused) and torch.equal(h3.grad, h.grad)
    assert torch.equal(fast_dropout_add(h, r, 0.1, False), h + r)  # eval: no dropout


def test_post_norm_outputs_fuse_dropout_and_residual(tiny_backbones):
    """BERT's two residual outputs per block take the fused forward, under their own class names (the
    parameter groups find modules by name), and compute what transformers' forward computes."""
    backbone = load_with_fast_ops(tiny_backbones["bert"], attn_implementation=FPT_CPU)
    outputs = [m for m in backbone.model.modules() if isinstance(m, ARCHITECTURES["bert"].fused_residual())]
    assert len(outputs) == 4 and all(type(m).__module__ == "fpt.fastops" for m in outputs)
    module = outputs[-1].train()
    x = torch.randn(2, 24, module.dense.in_features)
    residual = torch.randn(2, 24, module.dense.out_features, requires_grad=True)
    results = []
    for cls in (type(module), type(module).__bases__[0]):  # fused, then transformers' own forward
        module.__class__ = cls
        torch.manual_seed(1)
        out = module(x, residual)
        results.append((out, torch.autograd.grad(out.square().sum(), residual)[0]))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    eager = load_backbone(tiny_backbones["bert"], attn_implementation="eager").model
    assert not fo.use_fused_residual(eager, ARCHITECTURES["bert"].fused_residual())


@pytest.fixture
def fresh_kernels(monkeypatch, tmp_path):
    """Kernels built anew into an empty $FPT_CACHE in this test, and forgotten after it."""
    monkeypatch.setenv("FPT_CACHE", str(tmp_path))
    native.kernels.cache_clear()
    yield
    native.kernels.cache_clear()


def test_missing_compiler_falls_back_with_one_warning(monkeypatch, fresh_kernels):
    monkeypatch.setenv("CC", "no-such-compiler-fpt")
    with pytest.warns(RuntimeWarning, match="no-such-compiler-fpt.*not found"):
        assert native.kernels("hash_dropout") is None
    x = torch.randn(1000)
    assert torch.equal(hash_dropout(x, torch.tensor(9), 0.1, 2.0),
                       torch.where(hash_keep_mask(x.shape, 9, 0.1), x * 2.0, 0.0))
    monkeypatch.setenv("FPT_NATIVE", "0")
    native.kernels.cache_clear()
    assert native.kernels("hash_dropout") is None  # turned off: no build tried, no warning


@pytest.mark.skipif(shutil.which(os.environ.get("CC") or "cc") is None, reason="no C compiler")
def test_kernels_built_without_avx512_bf16_fall_back_with_one_warning(monkeypatch, fresh_kernels):
    """A CPU without AVX512-BF16, on any host: `-mno-avx512bf16` builds short_attention.c without its
    kernels (only its probes). It counts as unavailable, with one warning naming the cause, never an
    AttributeError; hash dropout, which needs no bf16 instructions, still builds and runs; the model's
    attention takes the torch path."""
    monkeypatch.setenv("FPT_CFLAGS", "-mno-avx512bf16")
    with pytest.warns(RuntimeWarning, match="short_attention.*unavailable on this CPU.*lacks fpt_short_attention"):
        assert native.kernels("short_attention") is None
    assert fo.short_attention_kernels() is None
    assert native.kernels("hash_dropout") is not None
    x = torch.randn(1000)
    assert torch.equal(hash_dropout(x, torch.tensor(9), 0.1, 2.0),
                       torch.where(hash_keep_mask(x.shape, 9, 0.1), x * 2.0, 0.0))
    q = torch.randn(2, 3, 32, 16).bfloat16()
    assert not fo.short_attention_fits(q, q, q, None)
    out, _ = fo.cpu_attention(SimpleNamespace(training=False, is_causal=False), q, q, q, None, scaling=0.25)
    assert out.shape == (2, 32, 3, 16)


@pytest.mark.skipif(shutil.which(os.environ.get("CC") or "cc") is None, reason="no C compiler")
def test_kernel_build_is_cached_and_atomic(monkeypatch, tmp_path):
    monkeypatch.setenv("FPT_CACHE", str(tmp_path))
    first = native.build("hash_dropout")
    assert first.parent == tmp_path / "native" and first.exists()
    stamp = first.stat().st_mtime_ns
    assert native.build("hash_dropout") == first and first.stat().st_mtime_ns == stamp  # not rebuilt
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no partial files left beside it


@pytest.mark.skipif(shutil.which(os.environ.get("CC") or "cc") is None, reason="no C compiler")
def test_kernel_build_follows_the_shared_header(monkeypatch, tmp_path):
    """The sources include fpt/csrc/hash_bits.h: a changed header is a new build, not a stale one."""
    import shutil as sh

    sources = tmp_path / "csrc"
    sh.copytree(native.SOURCE_DIR, sources)
    monkeypatch.setattr(native, "SOURCE_DIR", sources)
    monkeypatch.setenv("FPT_CACHE", str(tmp_path / "cache"))
    first = native.build("hash_dropout")
    header = sources / "hash_bits.h"
    header.write_text(header.read_text() + "\n/* changed */\n")
    assert native.build("hash_dropout") != first


def test_fast_dropout_scales_and_is_identity_in_eval():
    x = torch.ones(200_000)
    y = fast_dropout(x, 0.25, training=True)
    assert torch.isin(y.unique(), torch.tensor([0.0, 1 / 0.75])).all()
    assert y.mean().item() == pytest.approx(1.0, abs=0.01)  # expectation preserved
    assert fast_dropout(x, 0.25, training=False) is x
    x.requires_grad_(True)
    fast_dropout(x, 0.25, training=True).sum().backward()
    assert torch.isin(x.grad.unique(), torch.tensor([0.0, 1 / 0.75])).all()


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_fast_path_matches_eager_without_dropout(tiny_backbones, model_type):
    """In eval mode (no dropout) the fast path computes exactly what transformers' eager attention does
    (the tiny Gemma: 24 tokens, past its sliding window of 16)."""
    from fpt.models.bodies import HFBody

    x = torch.randn(3, 24, 64)
    outs = {}
    for attn in ("eager", FPT_CPU):
        backbone = load_with_fast_ops(tiny_backbones[model_type], attn_implementation=attn)
        torch.manual_seed(0)  # ViT's and Gemma's new position tables are drawn here
        body = HFBody(backbone, 24).eval()
        outs[attn] = body(x)
        dropouts = [m for m in body.modules() if isinstance(m, torch.nn.Dropout)]
        assert all(isinstance(m, FastDropout) for m in dropouts) == (attn == FPT_CPU) or not dropouts  # Gemma: none
    torch.testing.assert_close(outs[FPT_CPU], outs["eager"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
@pytest.mark.parametrize("attn", ["eager", "sdpa", FPT_CPU])
def test_padding_never_reaches_real_tokens(tiny_backbones, model_type, attn):
    """What sits in padded positions must not change any real token's output, under every implementation."""
    from fpt.models.bodies import HFBody

    body = HFBody(load_with_fast_ops(tiny_backbones[model_type], attn_implementation=attn), 12).eval()
    torch.manual_seed(0)
    x = torch.randn(2, 12, 64)
    mask = torch.tensor([[1] * 12, [1] * 7 + [0] * 5])
    other = x.clone()
    other[1, 7:] = torch.randn(5, 64) * 3
    torch.testing.assert_close(body(other, mask)[1, :7], body(x, mask)[1, :7], rtol=1e-5, atol=1e-5)


def _eager_and_fpt_cpu_bodies(backbone_dir, lengths: list[int], padded: bool, bf16: bool):
    """A body's outputs and input gradients at the real tokens, {attn: tensor} for transformers' eager
    attention and fpt's CPU attention; three sequences of lengths[0] tokens, padded to `lengths` or not."""
    from fpt.models.bodies import HFBody

    t = lengths[0]
    torch.manual_seed(0)
    x = torch.randn(3, t, 64)
    mask = (torch.arange(t) < torch.tensor(lengths)[:, None]).long() if padded else torch.ones(3, t).long()
    outs, grads = {}, {}
    for attn in ("eager", FPT_CPU):
        backbone = load_with_fast_ops(backbone_dir, attn_implementation=attn, dropout=0.0)
        torch.manual_seed(1)  # Gemma's new position table: the same for both
        body = HFBody(backbone, t).train()
        h = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = body(h, mask if padded else None)
        out.float()[mask.bool()].square().sum().backward()
        outs[attn], grads[attn] = out.float()[mask.bool()], h.grad[mask.bool()]
    return outs, grads


@pytest.mark.parametrize("padded", [True, False], ids=["padded", "unpadded"])
@pytest.mark.parametrize("model_type", CPU_ATTENTION)  # bidirectional, causal, causal with grouped key/value heads
@pytest.mark.parametrize("sdpa_from", [10**9, 1], ids=["eager-path", "sdpa-path"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cpu_attention_matches_eager(tiny_backbones, sdpa_from, precision, model_type, padded):
    """Both paths of fpt's CPU attention give transformers' eager outputs and input gradients (with and
    without padding; GPT-2 without padding gets no mask from transformers, only `is_causal`; the tiny
    Gemma shares one key/value head between two query heads, and 24 tokens pass its sliding window of 16)."""
    with fo.fused_sdpa_from(sdpa_from):
        outs, grads = _eager_and_fpt_cpu_bodies(tiny_backbones[model_type], [24, 14, 5], padded, precision == "bf16")
    # bf16: the fused kernel rounds at other points than the eager math (the tiny Gemma's fused path:
    # 2 of 4,608 outputs off by 0.021-0.023, its fp32 cases within 1e-5)
    bf16_tol = 3e-2 if model_type == "gemma3_text" else 2e-2
    tol = dict(rtol=1e-5, atol=1e-5) if precision == "fp32" else dict(rtol=bf16_tol, atol=bf16_tol)
    torch.testing.assert_close(outs[FPT_CPU], outs["eager"], **tol)
    torch.testing.assert_close(grads[FPT_CPU], grads["eager"], **tol)


def test_score_cap_and_grouped_heads_match_transformers_eager():
    """The parts of Gemma's eager attention the tiny model does not switch on: the tanh score cap."""
    from types import SimpleNamespace

    from transformers.models.gemma3.modeling_gemma3 import eager_attention_forward

    from fpt.fastops import cpu_attention

    torch.manual_seed(0)
    module = SimpleNamespace(training=False, is_causal=True, num_key_value_groups=4, head_dim=16)
    q, k, v = torch.randn(2, 8, 10, 16), torch.randn(2, 2, 10, 16), torch.randn(2, 2, 10, 16)
    allowed = torch.ones(10, 10, dtype=torch.bool).tril()[None, None].expand(2, 1, 10, 10)
    additive = torch.zeros(2, 1, 10, 10).masked_fill(~allowed, torch.finfo(torch.float32).min)
    for softcap in (None, 2.0):
        ours, _ = cpu_attention(module, q, k, v, allowed, scaling=0.3, softcap=softcap)
        theirs, _ = eager_attention_forward(module, q, k, v, additive, scaling=0.3, softcap=softcap)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    capped, _ = cpu_attention(module, q * 10, k, v, allowed, scaling=0.3, softcap=2.0)
    uncapped, _ = cpu_attention(module, q * 10, k, v, allowed, scaling=0.3)
    assert not torch.allclose(capped, uncapped)  # the cap took effect


def test_fused_kernel_only_for_long_sequences_of_narrow_heads():
    """The fused kernel (no weights returned) from SDPA_MIN_KEYS keys, for heads up to SDPA_MAX_HEAD_DIM wide
    (fpt's C kernels off: long attention's would take these lengths)."""
    from types import SimpleNamespace

    from fpt.fastops import SDPA_MAX_HEAD_DIM, SDPA_MIN_KEYS, cpu_attention

    module = SimpleNamespace(training=False, is_causal=False)

    def fused(t: int, d: int) -> bool:
        q = torch.randn(1, 2, t, d)
        with fo.eager_math_for_short_attention():
            return cpu_attention(module, q, q, q, None)[1] is None

    assert fused(SDPA_MIN_KEYS, 32) and fused(SDPA_MIN_KEYS, SDPA_MAX_HEAD_DIM)
    assert not fused(SDPA_MIN_KEYS - 1, 32) and not fused(SDPA_MIN_KEYS, 2 * SDPA_MAX_HEAD_DIM)


def test_attention_weights_wanted_keeps_the_eager_path(tiny_backbones):
    from fpt import fastops
    from fpt.models.bodies import HFBody

    body = HFBody(load_with_fast_ops(tiny_backbones["bert"], attn_implementation=FPT_CPU), 12).eval()
    weights = []
    attn_modules = [m for m in body.modules() if type(m).__name__ == "BertSelfAttention"]
    handles = [m.register_forward_hook(lambda _m, _i, out: weights.append(out[1])) for m in attn_modules]
    x = torch.randn(2, 12, 64)
    with fastops.fused_sdpa_from(1):
        body(x)
        assert all(w is None for w in weights)  # long enough for the fused kernel: no weights
        weights.clear()
        with fastops.attention_weights_wanted():
            body(x)
    assert len(weights) == 2 and all(w.shape == (2, 2, 12, 12) for w in weights)
    for h in handles:
        h.remove()


def test_fused_gelu_is_gpt2s_gelu_new():
    """`TanhGELU` computes transformers' `gelu_new` (values and gradients, to fp32 rounding), in one op."""
    from transformers.activations import NewGELUActivation

    from fpt.fastops import TanhGELU

    x = (torch.randn(100_000) * 4).requires_grad_(True)
    y = x.detach().clone().requires_grad_(True)
    fused, reference = TanhGELU()(x), NewGELUActivation()(y)
    torch.testing.assert_close(fused, reference, rtol=1e-6, atol=1e-6)
    fused.sum().backward()
    reference.sum().backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attn", ["eager", "sdpa", FPT_CPU])
def test_fused_gelu_everywhere_but_the_published_model(tiny_backbones, attn):
    """GPT-2's activation is swapped on every path except explicit `eager`, which the bench's reference
    loop uses to run transformers' model as published."""
    from fpt.fastops import TanhGELU

    backbone = load_with_fast_ops(tiny_backbones["gpt2"], attn_implementation=attn)
    acts = [type(block.mlp.act).__name__ for block in backbone.model.h]
    assert acts == ["NewGELUActivation" if attn == "eager" else TanhGELU.__name__] * len(backbone.model.h)


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_swapped_modules_keep_the_models_mode(tiny_backbones, model_type):
    """A loaded body is in eval mode; the dropout and GELU modules swapped in must be too (a fresh module starts
    in train mode, which had left a just-loaded body applying hidden dropout but not attention dropout)."""
    model = load_with_fast_ops(tiny_backbones[model_type], attn_implementation=FPT_CPU).model
    modes = {m.training for m in model.modules()}
    assert modes == {model.training}
    assert not any(type(m) is torch.nn.Dropout for m in model.modules())  # every one swapped (Gemma has none)


@pytest.fixture
def short_attention_kernel():
    if fo.short_attention_kernels() is None:
        pytest.skip("fpt/csrc/short_attention.c needs a C compiler and a CPU with AVX512-BF16")


def _heads_of_linear_outputs(b, h, t, d, seed=0):
    """(B, H, T, d) bf16 views of (B, T, H d) tensors, as attention reads its linear layers' outputs."""
    gen = torch.Generator().manual_seed(seed)
    flat = [torch.randn(b, t, h * d, generator=gen).bfloat16().requires_grad_() for _ in range(3)]
    return flat, [x.view(b, t, h, d).transpose(1, 2) for x in flat]


@pytest.mark.parametrize("masking", ["none", "padding", "causal"])
@pytest.mark.parametrize("p", [0.0, 0.1])
def test_short_attention_is_attention_with_hash_dropout(short_attention_kernel, masking, p):
    """The kernel against the math in fp32 from the same bf16 inputs, with hash_keep_mask's mask on the
    (B, H, T, T) probabilities: outputs and the three gradients within bf16 rounding."""
    b, h, t, d, scale, seed = 3, 2, 32, 16, 0.25, 987654321
    flat, (q, k, v) = _heads_of_linear_outputs(b, h, t, d)
    allowed = {"none": None, "causal": torch.ones(t, t, dtype=torch.bool).tril()[None, None],
               "padding": (torch.arange(t) < torch.tensor([t, 20, 5])[:, None])[:, None, None, :]}[masking]
    mask = None if allowed is None else allowed.expand(b, 1, t, t)[:, 0].to(torch.uint8).contiguous()
    out = SHORT_ATTENTION.eager.apply(q, k, v, mask, seed, scale, p)[0]
    assert out.shape == (b, t, h, d) and out.dtype == torch.bfloat16
    grad = torch.randn(out.shape).bfloat16()
    grads = torch.autograd.grad(out, flat, grad)

    ref_flat = [x.detach().float().requires_grad_() for x in flat]
    rq, rk, rv = (x.view(b, t, h, d).transpose(1, 2) for x in ref_flat)
    scores = rq @ rk.transpose(-1, -2) * scale
    if allowed is not None:
        scores = scores.masked_fill(~allowed, torch.finfo(torch.float32).min)
    keep = hash_keep_mask(torch.Size((b, h, t, t)), seed, p)
    ref = ((scores.softmax(-1) * keep) @ rv / (1 - p)).transpose(1, 2)
    ref_grads = torch.autograd.grad(ref, ref_flat, grad.float())
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
    for ours, theirs in zip(grads, ref_grads):
        torch.testing.assert_close(ours.float(), theirs, rtol=2e-2, atol=2e-2)
    if p > 0:  # the mask is hash_keep_mask's: another seed gives another output
        assert not torch.allclose(SHORT_ATTENTION.eager.apply(q, k, v, mask, seed + 1, scale, p)[0], out)


def test_short_attention_only_where_it_fits(short_attention_kernel):
    """bf16 on the CPU, T and d multiples of 16, T up to SHORT_ATTENTION_MAX_TOKENS, as many queries as keys."""
    def fits(t=64, d=32, tq=None, dtype=torch.bfloat16, mask=None):
        q = torch.randn(2, 3, tq or t, d).to(dtype)
        kv = torch.randn(2, 3, t, d).to(dtype)
        return fo.short_attention_fits(q, kv, kv, mask)

    assert fits() and fits(t=fo.SHORT_ATTENTION_MAX_TOKENS, d=64) and fits(mask=torch.ones(2, 1, 64, 64).bool())
    assert not fits(dtype=torch.float32) and not fits(t=24) and not fits(d=24) and not fits(tq=16)
    assert not fits(t=fo.SHORT_ATTENTION_MAX_TOKENS + 16) and not fits(mask=torch.zeros(2, 1, 64, 64))


@pytest.mark.parametrize("padded", [True, False], ids=["padded", "unpadded"])
@pytest.mark.parametrize("model_type", CPU_ATTENTION)
def test_short_attention_in_the_models_matches_eager(tiny_backbones, short_attention_kernel, model_type, padded):
    """At 32 tokens in bf16 fpt's CPU attention takes the kernel; the bodies' outputs and input gradients
    stay within bf16 rounding of transformers' eager attention."""
    outs, grads = _eager_and_fpt_cpu_bodies(tiny_backbones[model_type], [32, 20, 5], padded, bf16=True)
    # queries and keys normed in attention (Gemma 3's q_norm, k_norm) leave those fp32 norms in fp32 under
    # autocast: the kernel, bf16 only, is not for them
    qk_normed = any(hasattr(m, "q_norm") for m in load_backbone(tiny_backbones[model_type]).model.modules())
    took_kernel = SHORT_ATTENTION_NODE in _autograd_nodes(outs[FPT_CPU])
    assert took_kernel != qk_normed, "fpt's CPU attention did not take the kernel"
    assert SHORT_ATTENTION_NODE not in _autograd_nodes(outs["eager"])
    torch.testing.assert_close(outs[FPT_CPU], outs["eager"], rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(grads[FPT_CPU], grads["eager"], rtol=3e-2, atol=3e-2)


@pytest.mark.cpp_compiler
def test_short_attention_compiled_is_eager(short_attention_kernel):
    """Under torch.compile the same kernel runs as custom ops: the same draws, outputs and gradients, bit for bit."""
    from types import SimpleNamespace

    module = SimpleNamespace(training=True, is_causal=False)
    flat, _ = _heads_of_linear_outputs(2, 3, 32, 16)

    def attention(q, k, v):
        heads = [x.view(2, 32, 3, 16).transpose(1, 2) for x in (q, k, v)]
        return fo.cpu_attention(module, *heads, None, scaling=0.25, dropout=0.1)[0]

    results = []
    for fn in (attention, torch.compile(attention, fullgraph=True)):
        torch.manual_seed(3)
        out = fn(*flat)
        results.append((out, torch.autograd.grad(out.float().square().sum(), flat)))
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))


def test_short_attention_falls_back_to_the_eager_math_without_the_kernel(monkeypatch):
    """No build (no compiler, FPT_NATIVE=0) or no AVX512-BF16: cpu_attention runs the eager math instead."""
    monkeypatch.setattr(native, "kernels", lambda name: None)
    module = SimpleNamespace(training=False, is_causal=False)
    q = torch.randn(2, 3, 32, 16).bfloat16()
    assert not fo.short_attention_fits(q, q, q, None)
    out, weights = fo.cpu_attention(module, q, q, q, None, scaling=0.25)
    assert out.shape == (2, 32, 3, 16) and weights is not None  # the eager path returns its weights


def _frozen_bert_self_attention(tiny_backbones):
    backbone = load_with_fast_ops(tiny_backbones["bert"], attn_implementation=FPT_CPU)
    backbone.model.requires_grad_(False)  # FPT freezes the body's attention
    modules = [m for m in backbone.model.modules() if isinstance(m, ARCHITECTURES["bert"].projected_attention())]
    assert len(modules) == 2 and all(type(m).__module__ == "fpt.fastops" for m in modules)
    return modules[0].train()


@pytest.mark.parametrize("padded", [True, False], ids=["padded", "unpadded"])
def test_projected_attention_is_the_separate_projections(tiny_backbones, short_attention_kernel, padded):
    """BERT's q, k, v from one matmul into short attention: the output and the hidden state's gradient within
    bf16 rounding of the module's own forward (the same dropout masks, from the same seed)."""
    module = _frozen_bert_self_attention(tiny_backbones)
    x = torch.randn(3, 32, 64)
    mask = (torch.arange(32) < torch.tensor([32, 20, 5])[:, None])[:, None, None, :] if padded else None
    results, taken = [], []
    for forward in (type(module).forward, type(module).__bases__[0].forward):  # fused, then transformers' own
        h = x.clone().requires_grad_(True)
        torch.manual_seed(2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = forward(module, h, mask)[0]
        taken.append(PROJECTED_ATTENTION_NODE in _autograd_nodes(out))
        results.append((out.float(), torch.autograd.grad(out.float().square().sum(), h)[0]))
    assert taken == [True, False]
    torch.testing.assert_close(results[0][0], results[1][0], rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=3e-2, atol=3e-2)


def test_projected_attention_only_where_it_applies(tiny_backbones, short_attention_kernel):
    """Frozen plain linear projections under bf16 autocast at lengths the kernel takes; otherwise the module's
    own forward (trained or LoRA-wrapped projections, fp32, attention maps wanted, other lengths)."""
    module = _frozen_bert_self_attention(tiny_backbones)

    def fuses(t=32, autocast=True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return projections_fuse(module, torch.randn(2, t, 64), None, None)

    assert fuses()
    assert not fuses(t=24) and not fuses(autocast=False)
    with fo.attention_weights_wanted():
        assert not fuses()
    module.value.weight.requires_grad_(True)
    assert not fuses()
    module.value.weight.requires_grad_(False)
    module.query = torch.nn.Sequential(module.query)  # a wrapped projection (as LoRA wraps it)
    assert not fuses()
