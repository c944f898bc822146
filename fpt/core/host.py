"""Facts about this host and this process: where fpt caches, the CPU's flags, the malloc setting CPU training
wants, seeding, the device, package versions."""
from __future__ import annotations

import ctypes
import functools
import os
import platform
import random
from pathlib import Path

import numpy as np
import torch

from fpt.core.errors import FPTError


def cache_root() -> Path:
    """$FPT_CACHE, default ~/.cache/fpt: prepared backbones (fpt/backbones/cache.py), built CPU kernels
    (fpt/fastops/native.py)."""
    return Path(os.environ.get("FPT_CACHE") or Path.home() / ".cache" / "fpt")


@functools.cache
def cpu_flags() -> str:
    """This CPU's feature flags (/proc/cpuinfo), a key for what is built or measured per host."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's largest mmap threshold on 64-bit


@functools.cache  # once per process
def keep_freed_cpu_memory() -> bool:
    """Keep a CPU training process's freed blocks in glibc's heap instead of returning them to the kernel.

    glibc's malloc serves blocks above a (dynamic) threshold with fresh mmaps and trims the heap's top
    once 128 kB or more of it is free, so each step's activations, megabytes each, come back as new
    pages: about 10,000 page faults a MiniLM MNIST step. With the mmap threshold at its maximum (32 MB)
    and trimming off, a step reuses the last step's memory: 2-3% off a step, 5% with projected attention,
    whose buffers are larger (docs/performance.md). The process then holds its peak memory between
    steps, which a training process reaches every step anyway. Linux with glibc only; `FPT_MALLOC=default`
    leaves malloc as it is. Returns whether the setting took.
    """
    if os.environ.get("FPT_MALLOC", "").strip().lower() == "default" or platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(name: str = "auto") -> torch.device:
    """'auto' takes CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise FPTError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise FPTError(f"device {name!r} asked for, but CUDA is not available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise FPTError(f"device {name!r} does not exist: {torch.cuda.device_count()} CUDA device(s)")
    return device


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def host_kind() -> dict[str, object]:
    """The CPU a figure was measured on: its model name and whether it has native bf16 (AVX512-BF16 or
    AMX), which decides bf16's speed several-fold (fpt/models/precision.py)."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = cpu_flags().split()
    return {"cpu": name, "native_bf16": "avx512_bf16" in flags or "amx_bf16" in flags}


def versions() -> dict[str, str]:
    import transformers

    import fpt

    return {"fpt": fpt.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": np.__version__, "python": platform.python_version()}
