"""Fast paths that keep the math: cheaper dropout and attention without needless passes (CPU), and
GPT-2's GELU as one kernel (every device).

On the CPU the random generator, not the arithmetic, is what dropout costs: a MiniLM step on MNIST
(eager attention, bf16) takes 172 ms without dropout and about 250 ms with torch's dropout at 0.1,
most of the difference in drawing one random number per element (docs/performance.md).
`fast_dropout` draws the same distribution (each element kept with probability 1 - p, scaled by
1 / (1 - p)) from a counter-based hash of (seed, element index), one seed per call from torch's
generator: on the CPU one pass of C (fpt/csrc/hash_dropout.c) that draws, masks and scales, and a
backward that recomputes the mask rather than storing it. Results stay seeded and repeatable, and
differ from `nn.Dropout`'s only as two seeds differ.

`cpu_attention` is the attention of BERT, ViT, GPT-2 and Gemma 3 (`attn_implementation: auto` on the CPU): the
eager math with the scores kept in their own dtype (no fp32 round trip of the (B, H, T, T) matrix
under bf16), and torch's fused SDPA kernel where it is faster: long sequences without attention
dropout (docs/performance.md, "Attention on the CPU").

`short_attention`: for bf16 attention of up to 256 tokens, `cpu_attention` hands each (batch, head) to one
C pass (fpt/csrc/short_attention.c, AVX512-BF16) that computes scores, softmax, hash dropout and the
product with the values in the core's cache, and the backward likewise: at MNIST's 64 tokens torch's
batched matmuls of 64 x 64 x 32 ran at half the matmul peak, with a pass over memory between each op.

`use_fused_gelu`: transformers writes GPT-2's `gelu_new` as eight elementwise ops, and bf16 autocast runs
its `pow` in fp32, so the whole (B, T, 4D) activation and its backward went through fp32 passes: 60% of
a bf16 GPT-2 step on an H200 (docs/performance.md, "GPU"). torch's tanh-approximate `F.gelu` is the same
function in one kernel, in the input's dtype.
"""
from __future__ import annotations

import contextlib
import functools
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from fpt import native

FPT_CPU = "fpt_cpu"  # the attention implementation name registered with transformers (`cpu_attention`)


_NATIVE_DTYPES = (torch.float32, torch.bfloat16)  # what fpt/csrc/hash_dropout.c reads and writes
# SplitMix64's constants as int64 (torch has no uint64 arithmetic): the hash of fpt/csrc/hash_dropout.c
_GOLDEN, _MIX1, _MIX2 = (c - 2**64 for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def _shr(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 words (torch's `>>` is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def drop_threshold(p: float) -> int:
    """An element is dropped when its 32 random bits are below this: probability p to within 2^-32."""
    return min(round(p * 2**32), 2**32 - 1)


def hash_keep_mask(shape: torch.Size, seed: int, p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """Which elements hash dropout keeps: element i (row-major) iff the high 32 bits of SplitMix64's
    output function at seed + i * golden are >= `drop_threshold(p)`.

    The torch form of fpt/csrc/hash_dropout.c: its fallback (no compiler, other dtypes and devices),
    and the reference its tests compare against bit for bit.
    """
    seed %= 2**64
    seed -= 2**64 if seed >= 2**63 else 0  # the same 64 bits as an int64
    z = torch.arange(math.prod(shape), dtype=torch.int64, device=device) * _GOLDEN + seed
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return _shr(z ^ _shr(z, 31), 32).view(shape) >= drop_threshold(p)


def _dropout_forward(x: torch.Tensor, seed: int, p: float, scale: float) -> torch.Tensor:
    """`torch.where(hash_keep_mask(x.shape, seed, p), x * scale, 0)`, contiguous; on the CPU in fp32 and
    bf16 one pass of fpt/csrc/hash_dropout.c, elsewhere the torch form."""
    lib = native.kernels("hash_dropout") if x.device.type == "cpu" and x.dtype in _NATIVE_DTYPES else None
    if lib is None:
        return torch.where(hash_keep_mask(x.shape, seed, p, x.device), x * scale, 0.0).contiguous()
    kernel = lib.fpt_hash_dropout_bf16 if x.dtype == torch.bfloat16 else lib.fpt_hash_dropout_f32
    return _run_kernel(kernel, [x], x.dtype, seed, p, scale)


def _run_kernel(kernel, inputs: list[torch.Tensor], out_dtype: torch.dtype, seed: int, p: float,
                scale: float) -> torch.Tensor:
    """One fpt/csrc/hash_dropout.c kernel over `inputs` (made contiguous) into a new tensor of their shape."""
    inputs = [t.contiguous() for t in inputs]
    out = torch.empty(inputs[0].shape, dtype=out_dtype)
    kernel(*(t.data_ptr() for t in inputs), out.data_ptr(), out.numel(), seed % 2**64, drop_threshold(p), scale,
           torch.get_num_threads())
    return out


def _draw_seed() -> int:
    """One 63-bit draw from torch's CPU generator: `torch.manual_seed`, checkpoints and the ranks'
    dropout streams (fpt/distributed.py) decide every mask."""
    return int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))


class _HashDropout(torch.autograd.Function):
    """Eager autograd for hash dropout without a custom op's dispatch (most of a small op's cost: forward
    and backward of a 64-element tensor took 170 us through the ops, 40 us for torch's own dropout). Its
    backward: the same mask, recomputed from the seed, on the gradient."""

    @staticmethod
    def forward(ctx, x, seed: int, p: float, scale: float):
        ctx.args = (seed, p, scale)
        return _dropout_forward(x, seed, p, scale)

    @staticmethod
    def backward(ctx, grad):
        return _dropout_forward(grad, *ctx.args), None, None, None


# The same for torch.compile: opaque ops that trace without a graph break. The seed's op is tagged
# seeded: the compiled graph keeps one draw per dropout, in eager's order, and never re-runs it to save
# memory (the backward reads the seed the forward drew).
@torch.library.custom_op("fpt::dropout_seed", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,))
def dropout_seed(like: torch.Tensor) -> torch.Tensor:
    """`_draw_seed` as a 0-d int64 tensor; `like` is the tensor dropped."""
    return torch.tensor(_draw_seed(), dtype=torch.int64)


@dropout_seed.register_fake
def _(like: torch.Tensor) -> torch.Tensor:
    return torch.empty((), dtype=torch.int64)


@torch.library.custom_op("fpt::hash_dropout", mutates_args=())
def hash_dropout(x: torch.Tensor, seed: torch.Tensor, p: float, scale: float) -> torch.Tensor:
    """`_dropout_forward` with the seed a tensor; its backward, the same mask on the gradient."""
    return _dropout_forward(x, int(seed), p, scale)


@hash_dropout.register_fake
def _(x: torch.Tensor, seed: torch.Tensor, p: float, scale: float) -> torch.Tensor:
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _hash_dropout_context(ctx, inputs, output) -> None:
    _, seed, ctx.p, ctx.scale = inputs
    ctx.save_for_backward(seed)


def _hash_dropout_backward(ctx, grad: torch.Tensor):
    (seed,) = ctx.saved_tensors
    return hash_dropout(grad, seed, ctx.p, ctx.scale), None, None, None


hash_dropout.register_autograd(_hash_dropout_backward, setup_context=_hash_dropout_context)


def seeded_dropout(x: torch.Tensor, p: float, scale: float) -> torch.Tensor:
    """Hash dropout of `x` with a fresh seed: x * scale where kept, 0 where dropped (probability p)."""
    if torch.compiler.is_compiling():
        return hash_dropout(x, dropout_seed(x), p, scale)
    return _HashDropout.apply(x, _draw_seed(), p, scale)


def fast_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    if not training or p == 0.0:
        return x
    if p >= 1.0:
        return x * 0.0
    return seeded_dropout(x, p, 1.0 / (1.0 - p))


def _dropout_add_forward(h: torch.Tensor, residual: torch.Tensor, seed: int, p: float, scale: float) -> torch.Tensor:
    """`_dropout_forward(h, seed, p, scale) + residual`, bit for bit; on the CPU, for an fp32 residual and h in
    fp32 or bf16, one pass of fpt/csrc/hash_dropout.c instead of three (dropout, bf16 -> fp32, add)."""
    lib = native.kernels("hash_dropout") if _fused_add_applies(h, residual) else None
    if lib is None:
        return (_dropout_forward(h, seed, p, scale) + residual).contiguous()
    kernel = lib.fpt_hash_dropout_add_bf16 if h.dtype == torch.bfloat16 else lib.fpt_hash_dropout_add_f32
    return _run_kernel(kernel, [h, residual], torch.float32, seed, p, scale)


def _dropout_add_backward(grad: torch.Tensor, seed: int, p: float, scale: float, h_dtype: torch.dtype) -> torch.Tensor:
    """h's gradient in `_dropout_forward(h) + residual`: the gradient cast to h's dtype, dropped and scaled
    (what autograd computes through the unfused ops; for fp32 -> bf16 one pass of C)."""
    lib = native.kernels("hash_dropout")
    if lib is None or grad.device.type != "cpu" or (grad.dtype, h_dtype) != (torch.float32, torch.bfloat16):
        return _dropout_forward(grad.to(h_dtype), seed, p, scale)
    return _run_kernel(lib.fpt_hash_dropout_f32_to_bf16, [grad], torch.bfloat16, seed, p, scale)


def _fused_add_applies(h: torch.Tensor, residual: torch.Tensor) -> bool:
    return (h.device.type == "cpu" and residual.device.type == "cpu" and h.dtype in _NATIVE_DTYPES
            and residual.dtype == torch.float32 and h.shape == residual.shape)


class _HashDropoutAdd(torch.autograd.Function):
    """Eager autograd for `hash_dropout_add` without a custom op's dispatch (most of a small op's cost)."""

    @staticmethod
    def forward(ctx, h, residual, seed: int, p: float, scale: float):
        ctx.args, ctx.h_dtype, ctx.residual_dtype = (seed, p, scale), h.dtype, residual.dtype
        return _dropout_add_forward(h, residual, seed, p, scale)

    @staticmethod
    def backward(ctx, grad):
        return (_dropout_add_backward(grad, *ctx.args, ctx.h_dtype), grad.to(ctx.residual_dtype), None, None, None)


# the same computation for torch.compile: opaque ops that trace without a graph break
@torch.library.custom_op("fpt::hash_dropout_add", mutates_args=())
def hash_dropout_add(h: torch.Tensor, residual: torch.Tensor, seed: torch.Tensor, p: float, scale: float) -> torch.Tensor:
    return _dropout_add_forward(h, residual, int(seed), p, scale)


@hash_dropout_add.register_fake
def _(h: torch.Tensor, residual: torch.Tensor, seed: torch.Tensor, p: float, scale: float) -> torch.Tensor:
    shape = torch.broadcast_shapes(h.shape, residual.shape)
    return torch.empty(shape, dtype=torch.promote_types(h.dtype, residual.dtype), device=residual.device)


@torch.library.custom_op("fpt::hash_dropout_add_backward", mutates_args=())
def hash_dropout_add_backward(grad: torch.Tensor, seed: torch.Tensor, p: float, scale: float,
                              h_dtype: torch.dtype) -> torch.Tensor:
    return _dropout_add_backward(grad, int(seed), p, scale, h_dtype)


@hash_dropout_add_backward.register_fake
def _(grad: torch.Tensor, seed: torch.Tensor, p: float, scale: float, h_dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(grad.shape, dtype=h_dtype, device=grad.device)


def _hash_dropout_add_context(ctx, inputs, output) -> None:
    h, residual, seed, ctx.p, ctx.scale = inputs
    ctx.h_dtype, ctx.residual_dtype = h.dtype, residual.dtype
    ctx.save_for_backward(seed)


def _hash_dropout_add_grad(ctx, grad: torch.Tensor):
    (seed,) = ctx.saved_tensors
    return (hash_dropout_add_backward(grad, seed, ctx.p, ctx.scale, ctx.h_dtype), grad.to(ctx.residual_dtype),
            None, None, None)


hash_dropout_add.register_autograd(_hash_dropout_add_grad, setup_context=_hash_dropout_add_context)


def fast_dropout_add(h: torch.Tensor, residual: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """`fast_dropout(h, p, training) + residual`: the same masks and values, in one pass on the CPU."""
    if not training or p == 0.0:
        return h + residual
    if p >= 1.0:
        return h * 0.0 + residual
    scale = 1.0 / (1.0 - p)
    if torch.compiler.is_compiling():
        return hash_dropout_add(h, residual, dropout_seed(h), p, scale)
    return _HashDropoutAdd.apply(h, residual, _draw_seed(), p, scale)


class FastDropout(nn.Dropout):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)


def swap_modules(model: nn.Module, matches, replacement) -> int:
    """Replace every submodule `m` with `matches(m)` by `replacement(m)`; returns the count."""
    swapped = 0
    for module in model.modules():
        for name, child in module.named_children():
            if matches(child):
                # the new module keeps the old one's train/eval mode (a fresh module starts in train mode)
                setattr(module, name, replacement(child).train(child.training))
                swapped += 1
    return swapped


def use_fast_dropout(model: nn.Module) -> int:
    """Swap every `nn.Dropout` for `FastDropout` (same p, same train/eval switch); returns the count."""
    return swap_modules(model, lambda m: type(m) is nn.Dropout, lambda m: FastDropout(m.p))


# transformers modules whose forward is exactly LayerNorm(dropout(dense(hidden)) + input) (transformers
# 5.23): the post-norm residual of BERT (MiniLM) and MPNet, twice a block
DROPOUT_ADD_NORM_CLASSES = ("BertSelfOutput", "BertOutput", "MPNetOutput")


def _dropout_add_norm_forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
    hidden = self.dense(hidden_states)
    return self.LayerNorm(fast_dropout_add(hidden, input_tensor, self.dropout.p, self.dropout.training))


@functools.cache
def _same_named_subclass(cls: type, forward, doc: str) -> type:
    # the same name: architectures.classify_body finds modules by class name, so parameter groups stay
    return type(cls.__name__, (cls,), {"forward": forward, "__module__": __name__, "__doc__": f"{cls.__name__} {doc}"})


def _swap_forward(model: nn.Module, class_names: tuple[str, ...], forward_for, doc: str,
                  condition=lambda module: True) -> int:
    """Give every module of a class named in `class_names` (and meeting `condition`) a same-named subclass
    whose forward is `forward_for(its class)`; returns the count."""
    swapped = 0
    for module in model.modules():
        cls = type(module)
        if cls.__name__ in class_names and cls.__module__ != __name__ and condition(module):
            module.__class__ = _same_named_subclass(cls, forward_for(cls), doc)
            swapped += 1
    return swapped


def use_fused_residual(model: nn.Module) -> int:
    """Give every DROPOUT_ADD_NORM_CLASSES module whose dropout is `FastDropout` the fused forward
    (`hash_dropout_add`: the same masks and values, one pass on the CPU); returns the count."""
    return _swap_forward(model, DROPOUT_ADD_NORM_CLASSES, lambda cls: _dropout_add_norm_forward,
                         "with dropout and the residual add in one pass.",
                         lambda module: isinstance(getattr(module, "dropout", None), FastDropout))


class TanhGELU(nn.Module):
    """`gelu_new` (0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))) as torch's one fused kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")


def use_fused_gelu(model: nn.Module) -> int:
    """Swap transformers' `NewGELUActivation` (GPT-2's `gelu_new`) for `TanhGELU`; returns the count."""
    return swap_modules(model, lambda m: type(m).__name__ == "NewGELUActivation", lambda m: TanhGELU())


# At this many keys and more, torch's fused CPU kernel (flash attention, no T x T matrix) beats the
# eager path; below it the eager path wins (its backward is 1.1-1.5x faster at 64-256 tokens).
# Measured on the 2-core CPU, MiniLM, bf16 (docs/performance.md). The fused kernel has no dropout
# of its own, so steps with attention dropout stay on the eager path.
SDPA_MIN_KEYS = 512
# ... and for heads of at most this width: the fused kernel saves passes over the (T, T) scores, whose
# cost against the matmuls' shrinks as heads widen. 1024 tokens, bf16, forward and backward, fused /
# eager ms: 115 / 331 at d = 32 (MiniLM), 203 / 361 at 64 (GPT-2), 173-233 / 238 at 128, 163-304 / 149-237
# at 256 (Gemma 3 270M, whose step took 10.8 s fused against 9.0 s eager).
SDPA_MAX_HEAD_DIM = 128
_weights_wanted = False


@contextlib.contextmanager
def attention_weights_wanted():
    """Within this block `cpu_attention` always runs the eager path and returns the weights."""
    global _weights_wanted
    before, _weights_wanted = _weights_wanted, True
    try:
        yield
    finally:
        _weights_wanted = before


def cpu_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                  **kwargs):
    """BERT's, ViT's, GPT-2's and Gemma 3's attention (transformers' `eager_attention_forward`), for the CPU.

    q: (B, H, T, d); k, v: (B, H / g, T, d), g = `module.num_key_value_groups` (1 but for Gemma);
    `attention_mask` None or boolean (B, 1, Tq, Tk), True where a query may look (transformers' sdpa
    mask, registered for this implementation, sliding windows included; None also for a causal model
    without padding, whose module says `is_causal`). Only for architectures whose own
    eager attention is exactly this (Architecture.standard_eager). Returns (out (B, T, H, d), weights or
    None); the weights feed the attention-map hooks of fpt/attention.py.
    """
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    dropout = dropout if module.training else 0.0
    # transformers' sdpa mask is None for a causal model without padding: causality is then ours to apply
    causal = attention_mask is None and getattr(module, "is_causal", False) and query.shape[2] > 1
    groups = getattr(module, "num_key_value_groups", 1)  # grouped-query attention (Gemma): heads share k, v
    if groups > 1:
        key, value = _repeat_heads(key, groups), _repeat_heads(value, groups)
    softcap = kwargs.get("softcap")  # Gemma's tanh cap on the scores (none in Gemma 3); not in the fused kernel
    if (dropout == 0.0 and softcap is None and key.shape[-2] >= SDPA_MIN_KEYS and query.shape[-1] <= SDPA_MAX_HEAD_DIM
            and not _weights_wanted):
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scaling,
                                             is_causal=causal)
        return out.transpose(1, 2).contiguous(), None
    if causal:  # (Tq, Tk), True on and below the diagonal (queries are the last Tq positions)
        tq, tk = query.shape[2], key.shape[2]
        attention_mask = torch.ones(tq, tk, dtype=torch.bool, device=query.device).tril(tk - tq)[None, None]
    if softcap is None and not _weights_wanted and short_attention_fits(query, key, value, attention_mask):
        return short_attention(query, key, value, attention_mask, scaling, dropout), None
    # NOTE: the scale goes on the queries and dropout's 1 / (1 - p) on the output, both (B, H, T, d), not on
    # the (B, H, T, T) scores, forward and backward: the same math (rounded at another point) with two
    # fewer passes over the largest tensor of the step at long lengths.
    weights = torch.matmul(query * scaling, key.transpose(2, 3))  # (B, H, T, d) x (B, H, d, T) -> (B, H, T, T)
    if softcap is not None:
        weights = torch.tanh(weights / softcap) * softcap
    if attention_mask is not None:
        weights = weights.masked_fill(~attention_mask, torch.finfo(weights.dtype).min)
    # NOTE: softmax in the scores' dtype: torch computes it in fp32 inside and rounds once, so under bf16
    # the result equals transformers' softmax(fp32).to(bf16) without the two (B, H, T, T) casts (or the
    # two of the backward); at 1024 tokens those casts were a third of the step.
    weights = F.softmax(weights, dim=-1)
    if dropout > 0.0:
        kept = seeded_dropout(weights, dropout, 1.0)
        out = torch.matmul(kept, value) * (1.0 / (1.0 - dropout))
    else:
        out = torch.matmul(weights, value)  # (B, H, T, d)
    out = out.transpose(1, 2).contiguous()  # (B, T, H, d)
    return out, weights


def _repeat_heads(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, Hkv, T, d) -> (B, Hkv * groups, T, d), each key/value head repeated for its query heads
    (transformers' `repeat_kv`)."""
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, groups, t, d).reshape(b, h * groups, t, d)



# Short sequences in bf16: fpt/csrc/short_attention.c, each (batch, head) in one pass (scores, softmax,
# hash dropout, product with the values, and the backward likewise), where torch's batched matmuls of
# 64 x 64 x 32 ran at half the matmul peak with a pass over memory per op between them. MiniLM, bf16,
# 32 x 12 heads x 64 tokens, forward and backward: 7.7 -> 4.5 ms a layer (docs/performance.md). Up to this
# many tokens: the (T, T) scores of a head then stay in the core's cache.
SHORT_ATTENTION_MAX_TOKENS = 256


def _short_attention_kernels():
    """fpt/csrc/short_attention.c, or None (no build, or a CPU without AVX512-BF16)."""
    lib = native.kernels("short_attention")
    return lib if lib is not None and lib.fpt_short_attention_ok() else None


@torch.compiler.assume_constant_result  # traced as its value: no graph break at the build and ctypes call
def _short_attention_available() -> bool:
    return _short_attention_kernels() is not None


_short_attention_off = False


@contextlib.contextmanager
def eager_math_for_short_attention():
    """Within this block cpu_attention runs the eager math where it would run the kernel: the same matmuls,
    which torch's FLOP counter sees (it cannot see into a C kernel; fpt.bench.count_flops)."""
    global _short_attention_off
    before, _short_attention_off = _short_attention_off, True
    try:
        yield
    finally:
        _short_attention_off = before


def short_attention_fits(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: torch.Tensor | None) -> bool:
    """Whether `short_attention` takes these (B, H, T, d) operands: bf16 on the CPU, as many queries as keys
    (T), T and d multiples of 16, T <= SHORT_ATTENTION_MAX_TOKENS, a boolean mask or none."""
    return (query.device.type == "cpu" and query.dtype == key.dtype == value.dtype == torch.bfloat16
            and key.shape == value.shape == query.shape and _short_attention_takes(*query.shape[2:], attention_mask))


def _short_attention_takes(t: int, d: int, attention_mask: torch.Tensor | None) -> bool:
    """T tokens of heads d wide, with this mask: the kernel's limits (the operands aside)."""
    return (t % 16 == 0 and d % 16 == 0 and t <= SHORT_ATTENTION_MAX_TOKENS and not _short_attention_off
            and (attention_mask is None or (attention_mask.dtype == torch.bool and attention_mask.dim() == 4
                                            and attention_mask.shape[1] == 1))
            and _short_attention_available())


def _heads_args(*tensors: torch.Tensor) -> list[int]:
    """Each (B, H, T, d) operand as the kernel takes it: pointer, batch, head and token strides."""
    args = []
    for x in tensors:
        args += [x.data_ptr(), x.stride(0), x.stride(1), x.stride(2)]
    return args


def _unit_last_stride(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _dropout_args(seed: int, p: float) -> tuple[int, int, float]:
    """(seed, threshold, output scale) for the kernels; no dropout is threshold 0 (every element kept)."""
    return (seed % 2**64, drop_threshold(p), 1.0 / (1.0 - p)) if p > 0.0 else (0, 0, 1.0)


def _short_attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                             scale: float, seed: int, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (B, T, H, d), the softmax (B, H, T, T), saved for the backward); mask: (B, T, T) uint8 or None."""
    q, k, v = (_unit_last_stride(x) for x in (q, k, v))
    b, h, t, d = q.shape
    out = torch.empty(b, t, h, d, dtype=torch.bfloat16)
    probs = torch.empty(b, h, t, t, dtype=torch.bfloat16)
    _short_attention_kernels().fpt_short_attention_fwd(
        *_heads_args(q, k, v), None if mask is None else mask.data_ptr(), b, h, t, d, scale, *_dropout_args(seed, p),
        probs.data_ptr(), out.data_ptr(), torch.get_num_threads())
    return out, probs


def _short_attention_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, probs: torch.Tensor,
                              grad: torch.Tensor, scale: float, seed: int, p: float,
                              fused: torch.Tensor | None = None) -> list[torch.Tensor]:
    """The gradients of q, k, v from the output's, as (B, T, H, d) tensors (transposed, the (B, H, T, d) ones);
    with `fused`, a contiguous (B, T, 3, H, d) tensor, written into its thirds (returned as views)."""
    q, k, v = (_unit_last_stride(x) for x in (q, k, v))
    grad = grad.to(torch.bfloat16).contiguous()
    b, h, t, d = q.shape
    if fused is None:
        grads, strides = [torch.empty(b, t, h, d, dtype=torch.bfloat16) for _ in range(3)], (t * h * d, h * d)
    else:
        grads, strides = list(fused.unbind(2)), fused.stride()[:2]
    _short_attention_kernels().fpt_short_attention_bwd(
        *_heads_args(q, k, v), probs.data_ptr(), grad.data_ptr(), b, h, t, d, scale, *_dropout_args(seed, p),
        *(g.data_ptr() for g in grads), *strides, torch.get_num_threads())
    return grads


class _ShortAttention(torch.autograd.Function):
    """Eager autograd for `short_attention` (no custom op's dispatch)."""

    @staticmethod
    def forward(ctx, q, k, v, mask, scale: float, seed: int, p: float):
        out, probs = _short_attention_forward(q, k, v, mask, scale, seed, p)
        ctx.save_for_backward(q, k, v, probs)
        ctx.args = scale, seed, p
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, probs = ctx.saved_tensors
        grads = _short_attention_backward(q, k, v, probs, grad, *ctx.args)
        return (*(g.transpose(1, 2) for g in grads), None, None, None, None)


# the same computation for torch.compile
@torch.library.custom_op("fpt::short_attention", mutates_args=())
def short_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
                       seed: torch.Tensor, scale: float, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _short_attention_forward(q, k, v, mask, scale, int(seed), p)


@short_attention_op.register_fake
def _(q, k, v, mask, seed, scale, p):
    b, h, t, d = q.shape
    return q.new_empty(b, t, h, d), q.new_empty(b, h, t, t)


@torch.library.custom_op("fpt::short_attention_backward", mutates_args=())
def short_attention_backward_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, probs: torch.Tensor,
                                grad: torch.Tensor, seed: torch.Tensor, scale: float,
                                p: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(_short_attention_backward(q, k, v, probs, grad, scale, int(seed), p))  # (B, T, H, d) each


@short_attention_backward_op.register_fake
def _(q, k, v, probs, grad, seed, scale, p):
    b, h, t, d = q.shape
    return tuple(q.new_empty(b, t, h, d) for _ in range(3))


def _short_attention_context(ctx, inputs, output) -> None:
    q, k, v, _, seed, ctx.scale, ctx.p = inputs
    ctx.save_for_backward(q, k, v, output[1], seed)


def _short_attention_grad(ctx, grad_out, grad_probs):
    q, k, v, probs, seed = ctx.saved_tensors
    grads = short_attention_backward_op(q, k, v, probs, grad_out, seed, ctx.scale, ctx.p)
    return (*(g.transpose(1, 2) for g in grads), None, None, None, None)


short_attention_op.register_autograd(_short_attention_grad, setup_context=_short_attention_context)


def short_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, scaling: float, dropout: float) -> torch.Tensor:
    """softmax(q k^T scaling, masked) with hash dropout at `dropout`, times v: (B, T, H, d), for operands
    that `short_attention_fits`; attention_mask (B or 1, 1, T, T) boolean, True where a query may look."""
    b, _, t, _ = query.shape
    mask = _mask_bytes(attention_mask, b, t)
    if torch.compiler.is_compiling():
        seed = dropout_seed(query) if dropout > 0.0 else torch.zeros((), dtype=torch.int64)
        return short_attention_op(query, key, value, mask, seed, scaling, dropout)[0]
    return _ShortAttention.apply(query, key, value, mask, scaling, _draw_seed() if dropout > 0.0 else 0, dropout)


def _mask_bytes(attention_mask: torch.Tensor | None, b: int, t: int) -> torch.Tensor | None:
    """A boolean (B or 1, 1, T, T) mask as the kernel reads it: (B, T, T) bytes, or None."""
    return None if attention_mask is None else attention_mask.expand(b, 1, t, t)[:, 0].to(torch.uint8).contiguous()


class _ProjectedShortAttention(torch.autograd.Function):
    """hidden (B, T, D) -> q, k, v from one matmul with the projections' weights stacked (3 H d x D), as a
    (B, T, 3, H, d) tensor -> short attention -> (B, T, H, d). The backward writes the three gradients
    into one (B, T, 3, H, d) tensor and takes them back to the hidden state in one matmul: no weight
    gradients (the projections are frozen), one cast and no sums where separate projections take three
    of each."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, mask, heads: int, scale: float, seed: int, p: float):
        b, t, width = hidden.shape
        with torch.autocast("cpu", enabled=False):
            qkv = torch.addmm(bias, hidden.reshape(b * t, width).to(torch.bfloat16), weight.t())
        qkv = qkv.view(b, t, 3, heads, -1)
        q, k, v = (x.transpose(1, 2) for x in qkv.unbind(2))
        out, probs = _short_attention_forward(q, k, v, mask, scale, seed, p)
        ctx.save_for_backward(qkv, probs, weight)
        ctx.args, ctx.hidden_dtype = (scale, seed, p), hidden.dtype
        return out

    @staticmethod
    def backward(ctx, grad):
        qkv, probs, weight = ctx.saved_tensors
        b, t = qkv.shape[:2]
        grads = torch.empty_like(qkv)
        _short_attention_backward(*(x.transpose(1, 2) for x in qkv.unbind(2)), probs, grad, *ctx.args, fused=grads)
        with torch.autocast("cpu", enabled=False):
            hidden_grad = torch.mm(grads.view(b * t, -1), weight).view(b, t, -1)
        return hidden_grad.to(ctx.hidden_dtype), None, None, None, None, None, None, None


# transformers modules whose forward is exactly: query, key and value linear layers on the hidden state, then
# the attention interface (transformers 5.23): BERT's self-attention
PROJECTED_ATTENTION_CLASSES = ("BertSelfAttention",)


def _projections_fuse(self, hidden_states: torch.Tensor, attention_mask, past_key_values) -> bool:
    """Whether this call takes `_ProjectedShortAttention`: fpt's CPU attention in eager bf16 autocast, plain
    frozen linear projections (not LoRA-wrapped, not trained), and what the kernel takes."""
    projections = (self.query, self.key, self.value)
    return (past_key_values is None and not _weights_wanted and not torch.compiler.is_compiling()
            and self.config._attn_implementation == FPT_CPU and hidden_states.device.type == "cpu"
            and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
            and all(type(m) is nn.Linear and m.bias is not None and not m.weight.requires_grad
                    and not m.bias.requires_grad for m in projections)
            and _short_attention_takes(hidden_states.shape[1], self.attention_head_size, attention_mask))


@functools.cache
def _projected_attention_forward(cls: type):
    def forward(self, hidden_states, attention_mask=None, past_key_values=None, **kwargs):
        if not _projections_fuse(self, hidden_states, attention_mask, past_key_values):
            return cls.forward(self, hidden_states, attention_mask, past_key_values, **kwargs)
        projections = (self.query, self.key, self.value)
        weight = torch.cat([m.weight for m in projections]).to(torch.bfloat16)  # (3 H d, D); bf16 already in bf16 runs
        bias = torch.cat([m.bias for m in projections]).to(torch.bfloat16)
        b, t, _ = hidden_states.shape
        p = self.dropout.p if self.training else 0.0
        out = _ProjectedShortAttention.apply(hidden_states, weight, bias, _mask_bytes(attention_mask, b, t),
                                             self.num_attention_heads, self.scaling, _draw_seed() if p > 0.0 else 0, p)
        return out.reshape(b, t, -1), None

    return forward


def use_projected_attention(model: nn.Module) -> int:
    """Give every PROJECTED_ATTENTION_CLASSES module the fused projection forward (which falls back to its
    own where `_projections_fuse` says no); returns the count."""
    return _swap_forward(model, PROJECTED_ATTENTION_CLASSES, _projected_attention_forward,
                         "with q, k, v from one matmul into short attention.")


def register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(FPT_CPU, cpu_attention)
    # NOTE: transformers builds no mask at all for an attention name it has no mask function for, and
    # padding would then leak into every token; sdpa's boolean mask serves both paths above.
    AttentionMaskInterface.register(FPT_CPU, sdpa_mask)
