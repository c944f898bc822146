"""The post-norm residual of BERT (MiniLM) and MPNet, LayerNorm(dropout(dense(x)) + input), with its dropout
and add as one pass on the CPU (the same masks and values as `fast_dropout` followed by the add)."""
from __future__ import annotations

import torch
from torch import nn

from fpt.fastops import native
from fpt.fastops.custom_ops import fused_op
from fpt.fastops.dropout import NATIVE_DTYPES, FastDropout, draw_seed, dropout_forward, dropout_seed, run_hash_kernel
from fpt.fastops.swap import swap_forward


def _dropout_add_forward(h: torch.Tensor, residual: torch.Tensor, seed: torch.Tensor, p: float,
                         scale: float) -> torch.Tensor:
    """`dropout_forward(h, seed, p, scale) + residual`, bit for bit; on the CPU, for an fp32 residual and h in
    fp32 or bf16, one pass of fpt/csrc/hash_dropout.c instead of three (dropout, bf16 -> fp32, add)."""
    seed = int(seed)
    lib = native.kernels("hash_dropout") if _fused_add_applies(h, residual) else None
    if lib is None:
        return (dropout_forward(h, seed, p, scale) + residual).contiguous()
    kernel = lib.fpt_hash_dropout_add_bf16 if h.dtype == torch.bfloat16 else lib.fpt_hash_dropout_add_f32
    return run_hash_kernel(kernel, [h, residual], torch.float32, seed, p, scale)


def _dropout_add_backward(grad: torch.Tensor, seed: torch.Tensor, p: float, scale: float,
                          h_dtype: torch.dtype) -> torch.Tensor:
    """h's gradient in `dropout_forward(h) + residual`: the gradient cast to h's dtype, dropped and scaled
    (what autograd computes through the unfused ops; for fp32 -> bf16 one pass of C)."""
    seed = int(seed)
    lib = native.kernels("hash_dropout")
    if lib is None or grad.device.type != "cpu" or (grad.dtype, h_dtype) != (torch.float32, torch.bfloat16):
        return dropout_forward(grad.to(h_dtype), seed, p, scale)
    return run_hash_kernel(lib.fpt_hash_dropout_f32_to_bf16, [grad], torch.bfloat16, seed, p, scale)


def _fused_add_applies(h: torch.Tensor, residual: torch.Tensor) -> bool:
    return (h.device.type == "cpu" and residual.device.type == "cpu" and h.dtype in NATIVE_DTYPES
            and residual.dtype == torch.float32 and h.shape == residual.shape)


def _fake_dropout_add(h, residual, seed, p, scale):
    shape = torch.broadcast_shapes(h.shape, residual.shape)
    return torch.empty(shape, dtype=torch.promote_types(h.dtype, residual.dtype), device=residual.device)


def _dropout_add_gradients(backward, saved, grad):
    seed, p, scale, h_dtype, residual_dtype = saved
    return backward(grad, seed, p, scale, h_dtype), grad.to(residual_dtype), None, None, None


HASH_DROPOUT_ADD = fused_op(
    "hash_dropout_add", _dropout_add_forward, _fake_dropout_add,
    saved=lambda inputs, output: (*inputs[2:], inputs[0].dtype, inputs[1].dtype),  # seed, p, scale, dtypes
    gradients=_dropout_add_gradients,
    backward=_dropout_add_backward,
    backward_fake=lambda grad, seed, p, scale, h_dtype: torch.empty(grad.shape, dtype=h_dtype, device=grad.device))
hash_dropout_add = HASH_DROPOUT_ADD.op  # fpt::hash_dropout_add(h, residual, seed, p, scale)


def fast_dropout_add(h: torch.Tensor, residual: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """`fast_dropout(h, p, training) + residual`: the same masks and values, in one pass on the CPU."""
    if not training or p == 0.0:
        return h + residual
    if p >= 1.0:
        return h * 0.0 + residual
    scale = 1.0 / (1.0 - p)
    if torch.compiler.is_compiling():
        return hash_dropout_add(h, residual, dropout_seed(h), p, scale)
    return HASH_DROPOUT_ADD.eager.apply(h, residual, draw_seed(), p, scale)


def _dropout_add_norm_forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
    hidden = self.dense(hidden_states)
    return self.LayerNorm(fast_dropout_add(hidden, input_tensor, self.dropout.p, self.dropout.training))


def use_fused_residual(model: nn.Module, classes: tuple[type, ...]) -> int:
    """Give every module of `classes` (the architecture's `fused_residual`: transformers modules whose forward
    is exactly LayerNorm(dropout(dense(hidden)) + input)) whose dropout is `FastDropout` the fused forward
    (`hash_dropout_add`: the same masks and values, one pass on the CPU); returns the count."""
    return swap_forward(model, classes, lambda cls: _dropout_add_norm_forward,
                        "with dropout and the residual add in one pass.",
                        lambda module: isinstance(getattr(module, "dropout", None), FastDropout))
