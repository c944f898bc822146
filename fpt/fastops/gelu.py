"""GPT-2's GELU as one kernel (every device).

transformers writes GPT-2's `gelu_new` as eight elementwise ops, and bf16 autocast runs its `pow` in fp32,
so the whole (B, T, 4D) activation and its backward went through fp32 passes: 60% of a bf16 GPT-2 step on
an H200 (docs/performance.md, "GPU"). torch's tanh-approximate `F.gelu` is the same function in one kernel,
in the input's dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fpt.fastops.swap import swap_modules


class TanhGELU(nn.Module):
    """`gelu_new` (0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))) as torch's one fused kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")


def use_fused_gelu(model: nn.Module, classes: tuple[type, ...]) -> int:
    """Swap every module of `classes` (the architecture's `tanh_gelu`: transformers' `NewGELUActivation`,
    GPT-2's `gelu_new`) for `TanhGELU`; returns the count."""
    return swap_modules(model, lambda m: isinstance(m, classes), lambda m: TanhGELU())
