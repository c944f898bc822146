"""`precision: auto`: bf16 where this device runs bf16 matmuls faster than fp32, else fp32.

- CUDA: bf16 where the GPU supports it (every Ampere-or-later GPU runs it at twice fp32's rate or more).
- CPU: a probe times a few matmuls of the model's width in both precisions (about 0.1-0.3 s) and
  picks the faster. CPUs with AVX512-BF16 or AMX run bf16 several times faster than fp32; CPUs without
  run it about 5x slower (emulated through fp32), so the pick matters either way. The result is cached
  in $FPT_CACHE/precision/, keyed by the CPU's flags and the width, so a host probes once; a probe
  timed while other processes ran on the CPU (a training beside it measured a third of the idle rate)
  is used for that run, marked `contended`, and not cached.

`FPT_AUTO_PRECISION=fp32|bf16` pins what auto picks without a probe (a cluster of mixed nodes, the
tests: the same numerics on every host). An explicit fp32 or bf16 is obeyed; bf16 on a CPU where the probe finds it slower gets one warning
with the two measured rates. Everything after `resolve` sees a concrete precision (fp32 or bf16); what
auto measured goes into result.json.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import time
import warnings

import torch

from fpt.core.config import PRECISIONS  # noqa: F401  (auto | fp32 | bf16: config's closed set)
from fpt.core.errors import FPTError
from fpt.core.files import write_json_atomic
from fpt.core.host import cache_root, cpu_flags

CONCRETE = ("fp32", "bf16")
PROBE_ROWS = 512  # tokens in a probe matmul: a batch of 8 x 64, one step's smallest matmul
PROBE_MIN_WIDTH = 256  # narrower (test-sized) models are probed at this width: tiny matmuls time only noise


def autocast(precision: str, device: torch.device):
    """The autocast context of a resolved precision (fp32: none)."""
    if precision not in CONCRETE:
        raise ValueError(f"autocast needs a resolved precision (fp32 or bf16), got {precision!r}")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _probe_file(width: int):
    key = hashlib.sha256(f"{torch.__version__}\0{cpu_flags()}".encode()).hexdigest()[:16]
    return cache_root() / "precision" / f"cpu-{key}-w{width}.json"


def _rate(dtype: torch.dtype, width: int, repeats: int = 3) -> float:
    """Best GFLOP/s of (PROBE_ROWS, width) @ (width, 4 width), the shape of a feed-forward matmul."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(PROBE_ROWS, width, generator=gen).to(dtype)
    b = torch.randn(width, 4 * width, generator=gen).to(dtype)
    a @ b  # warm-up: the first call picks and loads the kernel
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        a @ b
        best = min(best, (time.perf_counter() - t) / 2)
    return 2 * PROBE_ROWS * width * 4 * width / best / 1e9


def _own_runnable_threads(tasks: str = "/proc/self/task") -> int:
    """This process's threads that are running or runnable now (torch's pool spins a while after a matmul)."""
    count = 0
    for stat in glob.glob(os.path.join(tasks, "*", "stat")):
        with contextlib.suppress(OSError, IndexError):
            with open(stat) as f:
                count += f.read().rsplit(")", 1)[1].split()[0] == "R"
    return max(count, 1)  # at least the reading thread


def other_runnable_threads(loadavg: str = "/proc/loadavg", tasks: str = "/proc/self/task") -> int:
    """Threads of other processes runnable on this host now (Linux's loadavg; 0 where unknown)."""
    try:
        with open(loadavg) as f:
            runnable = int(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return 0
    return max(runnable - _own_runnable_threads(tasks), 0)


def probe_cpu(width: int) -> dict:
    """{'fp32_gflops', 'bf16_gflops'} for this CPU at `width`, measured once per host and cached."""
    path = _probe_file(width)
    try:
        cached = json.loads(path.read_text())
        if {"fp32_gflops", "bf16_gflops"} <= set(cached):
            return {**cached, "cached": True}
    except (OSError, ValueError):
        pass
    busy_before = other_runnable_threads()
    rates = {"fp32_gflops": round(_rate(torch.float32, width), 1), "bf16_gflops": round(_rate(torch.bfloat16, width), 1),
             "width": width}
    # Contended only if others ran both before and after: a passing `ls` is not a training beside us.
    if min(busy_before, other_runnable_threads()) > 0:
        return {**rates, "cached": False, "contended": True}
    with contextlib.suppress(OSError):  # a read-only cache only costs the probe next time
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, rates)
    return {**rates, "cached": False}


def resolve(requested: str, device: torch.device, width: int) -> tuple[str, dict]:
    """(fp32 | bf16, what was decided and measured) for a run at this model width on `device`."""
    info: dict = {"requested": requested}
    pinned = os.environ.get("FPT_AUTO_PRECISION", "").strip()
    if requested == "auto" and pinned:
        if pinned not in CONCRETE:
            raise FPTError(f"FPT_AUTO_PRECISION must be fp32 or bf16, got {pinned!r}")
        return pinned, {**info, "pinned_by": "FPT_AUTO_PRECISION", "resolved": pinned}
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
        info["cuda_bf16_supported"] = supported
        resolved = requested if requested != "auto" else ("bf16" if supported else "fp32")
    elif device.type == "cpu":
        rates = probe_cpu(max(width, PROBE_MIN_WIDTH))
        info.update(rates)
        faster = "bf16" if rates["bf16_gflops"] > rates["fp32_gflops"] else "fp32"
        resolved = faster if requested == "auto" else requested
        if requested == "bf16" and faster == "fp32":
            warnings.warn(f"fpt: bf16 is slower than fp32 on this CPU ({rates['bf16_gflops']:.0f} vs "
                          f"{rates['fp32_gflops']:.0f} GFLOP/s at width {width}, no native bf16): "
                          "--precision auto or fp32 would be faster", RuntimeWarning, stacklevel=2)
    else:  # mps and others: autocast to bf16 is not generally faster there
        resolved = requested if requested != "auto" else "fp32"
    info["resolved"] = resolved
    return resolved, info
