"""Long attention (fpt/csrc/long_attention.c): tiled attention with hash dropout, against fpt's eager attention with
the same dropout mask, and against torch's SDPA without dropout."""
import os
import shutil
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import load_with_fast_ops

from fpt import fastops as fo
from fpt.fastops import native
from fpt.fastops import FPT_CPU
from fpt.fastops.long_attention_kernel import (LONG_ATTENTION, LONG_ATTENTION_MAX_HEAD_DIM, LONG_ATTENTION_MIN_TOKENS,
                                               long_attention_fits, long_attention_kernels)

LONG_ATTENTION_NODE = f"{LONG_ATTENTION.eager.__name__}Backward"
HAS_CC = shutil.which(os.environ.get("CC") or "cc") is not None


@pytest.fixture(params=[torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def dtype(request):
    if long_attention_kernels(request.param) is None:
        pytest.skip(f"fpt/csrc/long_attention.c in {request.param} needs a C compiler and a CPU with AVX-512"
                    + (" and AVX512-BF16" if request.param == torch.bfloat16 else ""))
    return request.param


def _operands(b, h, t, d, dtype, seed=0):
    """(B, H, T, d) views of (B, T, H d) tensors, as attention reads its linear layers' outputs."""
    gen = torch.Generator().manual_seed(seed)
    flat = [torch.randn(b, t, h * d, generator=gen).to(dtype).requires_grad_() for _ in range(3)]
    return flat, [x.view(b, t, h, d).transpose(1, 2) for x in flat]


def _mask(masking: str, b: int, t: int):
    lengths = torch.tensor([t, t * 2 // 5, 0][:b])  # the last sequence all padding: every key masked
    keys = (torch.arange(t) < lengths[:, None])[:, None, None, :]
    return {"none": None, "padding": keys.expand(b, 1, t, t).contiguous(),  # as transformers' sdpa mask
            "padding-broadcast": keys.expand(b, 1, t, t),  # one row per sequence, broadcast over the queries
            "causal": torch.ones(t, t, dtype=torch.bool).tril()[None, None]}[masking]


@pytest.fixture(autouse=True)
def _fp32_takes_the_kernel_too():
    """Training takes the tiled kernel in bf16 only; these tests compare its fp32 build with the eager math."""
    with fo.long_attention_in_fp32():
        yield


def test_fp32_training_keeps_the_eager_math_by_default():
    """Outside the switch, fp32 attention never takes the tiled kernel: fp32 runs stay bit-identical."""
    _, (q, k, v) = _operands(2, 2, 300, 32, torch.float32)
    module = SimpleNamespace(training=True, is_causal=False)
    with fo.eager_math_for_short_attention():
        torch.manual_seed(5)
        ref = fo.cpu_attention(module, q, k, v, None, scaling=32 ** -0.5, dropout=0.1)[0]
    from fpt.fastops.switches import SWITCHES

    before = SWITCHES.long_attention_fp32
    SWITCHES.long_attention_fp32 = False
    try:
        torch.manual_seed(5)
        out = fo.cpu_attention(module, q, k, v, None, scaling=32 ** -0.5, dropout=0.1)[0]
    finally:
        SWITCHES.long_attention_fp32 = before
    assert torch.equal(out, ref) and LONG_ATTENTION_NODE not in {type(n).__name__ for n in _nodes(out)}


def _attention(q, k, v, mask, p, kernel: bool):
    """fpt's CPU attention in training, with the long kernel or (switched off) the eager math."""
    module = SimpleNamespace(training=True, is_causal=False)
    torch.manual_seed(5)  # the dropout seed: one draw either way
    if kernel:
        assert long_attention_fits(q, k, v, mask)
        out, weights = fo.cpu_attention(module, q, k, v, mask, scaling=q.shape[-1] ** -0.5, dropout=p)
        assert weights is None and LONG_ATTENTION_NODE in {type(n).__name__ for n in _nodes(out)}
    else:
        with fo.eager_math_for_short_attention():
            out, weights = fo.cpu_attention(module, q, k, v, mask, scaling=q.shape[-1] ** -0.5, dropout=p)
        assert weights is not None
    return out


def _tolerance(dtype):  # bf16: the suite's bf16 tolerance (tests/test_fastops.py)
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("t,d,masking", [(300, 32, "none"), (300, 32, "causal"), (513, 64, "padding"),
                                         (385, 48, "padding-broadcast")])
def test_long_attention_is_eager_attention_with_the_same_hash_dropout(dtype, t, d, masking):
    """Output and the q, k, v gradients as the eager path's, dropout mask included (same seed, same mask:
    hash_keep_mask of the (B, H, T, T) probabilities), at lengths that are no multiple of the tiles, with
    padding (a sequence all padding too) and a causal mask."""
    b, h = 3, 2
    results = []
    for kernel in (True, False):
        flat, (q, k, v) = _operands(b, h, t, d, dtype)
        out = _attention(q, k, v, _mask(masking, b, t), 0.1, kernel)
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
        results.append((out, torch.autograd.grad(out, flat, grad)))
    (out, grads), (ref, ref_grads) = results
    assert out.shape == (b, t, h, d) and out.dtype == dtype
    torch.testing.assert_close(out.float(), ref.float(), **_tolerance(dtype))
    for ours, theirs in zip(grads, ref_grads):
        torch.testing.assert_close(ours.float(), theirs.float(), **_tolerance(dtype))


def test_long_attention_mask_follows_the_seed(dtype):
    """Another seed, another mask; the same seed, the same output; p = 0 is no dropout."""
    _, (q, k, v) = _operands(2, 2, 300, 32, dtype)
    out = LONG_ATTENTION.eager.apply(q, k, v, None, 11, 0.2, 0.1)[0]
    assert torch.equal(LONG_ATTENTION.eager.apply(q, k, v, None, 11, 0.2, 0.1)[0], out)
    assert not torch.allclose(LONG_ATTENTION.eager.apply(q, k, v, None, 12, 0.2, 0.1)[0], out)
    plain = LONG_ATTENTION.eager.apply(q, k, v, None, 0, 0.2, 0.0)[0]
    sdpa = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), scale=0.2).transpose(1, 2)
    torch.testing.assert_close(plain.float(), sdpa, **_tolerance(dtype))


@pytest.mark.parametrize("masking", ["none", "padding"])
def test_long_attention_without_dropout_is_sdpa(dtype, masking):
    """Without dropout: torch's SDPA, outputs and gradients (the padded sequences only: SDPA gives a sequence
    that is all padding NaN rows)."""
    b, h, t, d = 2, 3, 333, 32
    mask = _mask(masking, b, t)
    results = []
    for kernel in (True, False):
        flat, (q, k, v) = _operands(b, h, t, d, dtype, seed=3)
        if kernel:
            out = LONG_ATTENTION.eager.apply(q, k, v, None if mask is None else mask[:, 0], 0, d ** -0.5, 0.0)[0]
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
        results.append((out, torch.autograd.grad(out, flat, grad)))
    for ours, theirs in zip([results[0][0], *results[0][1]], [results[1][0], *results[1][1]]):
        torch.testing.assert_close(ours.float(), theirs.float(), **_tolerance(dtype))


def test_long_attention_only_where_it_fits(dtype):
    def fits(t=LONG_ATTENTION_MIN_TOKENS, d=32, tq=None, kind=dtype, mask=None):
        q = torch.randn(2, 3, tq or t, d).to(kind)
        kv = torch.randn(2, 3, t, d).to(kind)
        return long_attention_fits(q, kv, kv, mask)

    assert fits() and fits(t=1000, d=64) and fits(d=LONG_ATTENTION_MAX_HEAD_DIM)
    assert fits(t=300, mask=torch.ones(2, 1, 300, 300).bool()) and not fits(d=LONG_ATTENTION_MAX_HEAD_DIM + 16)
    assert fits(t=300, mask=torch.ones(1, 1, 1, 300).bool())
    assert not fits(t=LONG_ATTENTION_MIN_TOKENS - 1) and not fits(d=24) and not fits(tq=300, t=400)
    assert not fits(kind=torch.float16) and not fits(t=300, mask=torch.zeros(2, 1, 300, 300))
    with fo.eager_math_for_short_attention():  # the FLOP counter's switch: the eager math, whose matmuls it sees
        assert not fits()


def test_long_attention_flops_are_counted_as_its_matmuls(dtype):
    """torch's counter cannot see into the kernel: count_flops runs the eager math in its place, whose matmuls
    are the ones the kernel's FLOPs are priced as (two forward, four backward)."""
    from fpt.bench.measure import count_flops

    module = SimpleNamespace(training=True, is_causal=False)
    q, k, v = (torch.randn(1, 2, 160, 16).to(dtype).requires_grad_() for _ in range(3))
    assert long_attention_fits(q, k, v, None)

    def step():
        fo.cpu_attention(module, q, k, v, None, scaling=0.25, dropout=0.1)[0].float().sum().backward()

    assert count_flops(step) == 6 * 2 * 2 * 160 * 160 * 16


@pytest.mark.skipif(not HAS_CC, reason="no C compiler")
def test_long_attention_without_avx512_bf16_keeps_fp32_and_falls_back_in_bf16(monkeypatch, tmp_path):
    """A CPU without AVX512-BF16 (`-mno-avx512bf16` on any host): the fp32 kernels only, no warning; bf16
    attention takes the eager path. Without AVX-512 at all: unavailable with one warning, the eager path."""
    monkeypatch.setenv("FPT_CACHE", str(tmp_path))
    native.kernels.cache_clear()
    try:
        monkeypatch.setenv("FPT_CFLAGS", "-mno-avx512bf16")
        has_avx512 = long_attention_kernels(torch.float32) is not None
        assert long_attention_kernels(torch.bfloat16) is None
        q = torch.randn(1, 2, 300, 32).bfloat16()
        assert not long_attention_fits(q, q, q, None)
        out, weights = fo.cpu_attention(SimpleNamespace(training=True, is_causal=False), q, q, q, None, dropout=0.1)
        assert out.shape == (1, 300, 2, 32) and weights is not None  # the eager path
        if has_avx512:
            monkeypatch.setenv("FPT_CFLAGS", "-mno-avx512f")
            native.kernels.cache_clear()
            with pytest.warns(RuntimeWarning, match="long_attention.*unavailable on this CPU"):
                assert long_attention_kernels(torch.float32) is None
            assert not long_attention_fits(q.float(), q.float(), q.float(), None)
    finally:
        native.kernels.cache_clear()


def test_long_attention_falls_back_to_the_eager_math_without_the_kernel(monkeypatch):
    monkeypatch.setattr(native, "kernels", lambda name: None)
    q = torch.randn(1, 2, 300, 32)
    assert not long_attention_fits(q, q, q, None)
    out, weights = fo.cpu_attention(SimpleNamespace(training=True, is_causal=False), q, q, q, None, dropout=0.1)
    assert out.shape == (1, 300, 2, 32) and weights is not None


@pytest.mark.parametrize("model_type", ["bert", "gpt2"])
def test_long_attention_in_the_models_is_the_eager_path(tiny_backbones, dtype, model_type):
    """A body in training (attention dropout 0.1) at 300 tokens with padding: the kernel gives the eager path's
    outputs and input gradients, dropout masks included (the same seeds, drawn in the same order)."""
    from fpt.models.bodies import HFBody

    t = 300
    torch.manual_seed(0)
    x = torch.randn(2, t, 64)
    mask = (torch.arange(t) < torch.tensor([t, 170])[:, None]).long()
    results = []
    for kernel in (True, False):
        backbone = load_with_fast_ops(tiny_backbones[model_type], attn_implementation=FPT_CPU, dropout=0.1)
        torch.manual_seed(1)
        body = HFBody(backbone, t).train()
        h = x.clone().requires_grad_(True)
        torch.manual_seed(2)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            if kernel:
                out = body(h, mask)
            else:
                with fo.eager_math_for_short_attention():
                    out = body(h, mask)
        out.float()[mask.bool()].square().sum().backward()
        assert (LONG_ATTENTION_NODE in {type(n).__name__ for n in _nodes(out)}) == kernel
        results.append((out.float()[mask.bool()], h.grad[mask.bool()]))
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(results[0][0], results[1][0], **tol)
    torch.testing.assert_close(results[0][1], results[1][1], **tol)


def _nodes(out: torch.Tensor) -> list:
    todo, seen = [out.grad_fn], []
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.append(node)
        todo += [n for n, _ in node.next_functions]
    return seen


@pytest.mark.cpp_compiler
def test_long_attention_compiled_is_eager():
    """Under torch.compile the same kernel runs as custom ops: the same draws, outputs and gradients, bit for bit."""
    if long_attention_kernels(torch.float32) is None:
        pytest.skip("fpt/csrc/long_attention.c needs a C compiler and a CPU with AVX-512")
    module = SimpleNamespace(training=True, is_causal=False)
    flat, _ = _operands(1, 2, 300, 32, torch.float32)

    def attention(q, k, v):
        heads = [x.view(1, 300, 2, 32).transpose(1, 2) for x in (q, k, v)]
        return fo.cpu_attention(module, *heads, None, scaling=0.2, dropout=0.1)[0]

    results = []
    for fn in (attention, torch.compile(attention, fullgraph=True)):
        torch.manual_seed(3)
        out = fn(*flat)
        results.append((out, torch.autograd.grad(out.square().sum(), flat)))
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))
