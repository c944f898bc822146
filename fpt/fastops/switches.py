"""How fpt's CPU attention may run: one switchboard, changed only for a block, through the context managers
below (never assigned from outside fastops)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass


@dataclass
class AttentionSwitches:
    # always the eager path, which returns the attention weights (fpt/paper/attention.py's maps)
    weights_wanted: bool = False
    # False: the eager math where short or long attention's C kernel would run (torch's FLOP counter sees only
    # matmuls)
    short_kernel: bool = True
    # torch's fused SDPA from this many keys; None: attention.SDPA_MIN_KEYS (tests reach it at tiny lengths)
    sdpa_min_keys: int | None = None
    # long attention's tiled kernel in fp32 too (by default bf16 only: fp32 runs stay bit-identical to the eager
    # math; the kernel's tests compare its fp32 build against it)
    long_attention_fp32: bool = False


# NOTE: a plain module-level object, not a ContextVar: torch.compile reads its fields as constants (guarded),
# where a ContextVar would break the graph
SWITCHES = AttentionSwitches()


@contextlib.contextmanager
def _switched(**changes):
    before = {name: getattr(SWITCHES, name) for name in changes}
    for name, value in changes.items():
        setattr(SWITCHES, name, value)
    try:
        yield
    finally:
        for name, value in before.items():
            setattr(SWITCHES, name, value)


def attention_weights_wanted():
    """Within this block `cpu_attention` always runs the eager path and returns the weights."""
    return _switched(weights_wanted=True)


def eager_math_for_short_attention():
    """Within this block cpu_attention runs the eager math where it would run a C kernel (short or long
    attention): the same matmuls, which torch's FLOP counter sees (it cannot see into a C kernel;
    fpt.bench.measure.count_flops)."""
    return _switched(short_kernel=False)


def fused_sdpa_from(keys: int):
    """Within this block `cpu_attention` takes torch's fused SDPA from `keys` keys (not SDPA_MIN_KEYS)."""
    return _switched(sdpa_min_keys=keys)


def long_attention_in_fp32():
    """Within this block fp32 attention takes long attention's tiled kernel where it fits (tests, benchmarks)."""
    return _switched(long_attention_fp32=True)
