"""Fast paths that keep the math: cheaper dropout and attention without needless passes (CPU), and
GPT-2's GELU as one kernel (every device). One module per fused op (docs/architecture.md):

- dropout: hash dropout (`fast_dropout`, `FastDropout`), fpt/csrc/hash_dropout.c
- residual: BERT's and MPNet's dropout + residual add in one pass (`use_fused_residual`)
- gelu: GPT-2's `gelu_new` as torch's one tanh-GELU kernel (`TanhGELU`, `use_fused_gelu`)
- attention: `cpu_attention`, the `fpt_cpu` attention implementation (`register`)
- short_attention_kernel: bf16 attention of up to 256 tokens, fpt/csrc/short_attention.c
- long_attention_kernel: tiled attention from 128 tokens (online softmax, dropout in the tile; bf16 in
  training), fpt/csrc/long_attention.c
- projected_attention: BERT's q, k, v as one matmul into short attention
- custom_ops: one computation as an eager autograd.Function and as torch.compile custom ops
- swap: swapping modules and forwards in a loaded model; switches: what cpu_attention may do, per block

Which transformers classes get a fused forward is the architecture's choice (fpt/backbones/architectures.py:
`fused_residual`, `projected_attention`, `tanh_gelu`); the `use_*` functions take the classes.
"""
from fpt.fastops.attention import FPT_CPU, SDPA_MAX_HEAD_DIM, SDPA_MIN_KEYS, cpu_attention, register
from fpt.fastops.dropout import (FastDropout, drop_threshold, dropout_seed, fast_dropout, hash_dropout, hash_keep_mask,
                                 seeded_dropout, use_fast_dropout)
from fpt.fastops.gelu import TanhGELU, use_fused_gelu
from fpt.fastops.projected_attention import use_projected_attention
from fpt.fastops.residual import fast_dropout_add, hash_dropout_add, use_fused_residual
from fpt.fastops.short_attention_kernel import (SHORT_ATTENTION_MAX_TOKENS, short_attention, short_attention_fits,
                                                short_attention_kernels)
from fpt.fastops.swap import swap_modules
from fpt.fastops.switches import (attention_weights_wanted, eager_math_for_short_attention, fused_sdpa_from,
                                  long_attention_in_fp32)

__all__ = [
    "FPT_CPU", "SDPA_MAX_HEAD_DIM", "SDPA_MIN_KEYS", "SHORT_ATTENTION_MAX_TOKENS", "FastDropout", "TanhGELU",
    "attention_weights_wanted", "cpu_attention", "drop_threshold", "dropout_seed", "eager_math_for_short_attention",
    "fast_dropout", "fast_dropout_add", "fused_sdpa_from", "hash_dropout", "hash_dropout_add", "hash_keep_mask",
    "long_attention_in_fp32",
    "register", "seeded_dropout", "short_attention", "short_attention_fits", "short_attention_kernels",
    "swap_modules", "use_fast_dropout", "use_fused_gelu", "use_fused_residual", "use_projected_attention",
]
