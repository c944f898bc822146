"""fpt's C kernels for the CPU (fpt/csrc/*.c), built on first use with the system's C compiler and
loaded with ctypes.

Why C and not a torch C++ extension: an extension includes torch's headers (a minute per build, and
ninja); these kernels need only <stdint.h> and build in under a second. They work on raw pointers;
fastops checks dtype and contiguity before calling them, and ctypes releases the GIL during a call.

A build is cached in $FPT_CACHE/native (default ~/.cache/fpt/native), under a name hashed from the
source, the compiler command and this CPU's flags: `-march=native` code built on one node of a
cluster must not load on another. `FPT_NATIVE=0` turns the kernels off. Without a compiler, or when
the build fails, `kernels(name)` returns None and fastops computes the same results in torch, slower,
after one warning that names the cause.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

from fpt.core.host import cache_root, cpu_flags

SOURCE_DIR = Path(__file__).resolve().parent.parent / "csrc"
CFLAGS = ["-O3", "-march=native", "-std=c11", "-shared", "-fPIC"]


def cflags() -> list[str]:
    """CFLAGS, then $FPT_CFLAGS: `FPT_CFLAGS=-mno-avx512bf16` builds as a CPU without native bf16 would
    (the tests use it so that every host covers both paths)."""
    return CFLAGS + os.environ.get("FPT_CFLAGS", "").split()
# torch's wheel ships libgomp.so.1 and loads it first, so the kernels' OpenMP shares torch's thread pool
OPENMP = ["-fopenmp"]


def enabled() -> bool:
    return os.environ.get("FPT_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def build(name: str) -> Path:
    """Compile fpt/csrc/NAME.c into the cache (once per source, compiler and CPU); the .so's path.

    Raises RuntimeError with the compiler's first error line when no compiler works.
    """
    source = SOURCE_DIR / f"{name}.c"
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C compiler ({compiler!r} not found; set CC)")
    headers = [h.read_bytes() for h in sorted(SOURCE_DIR.glob("*.h"))]  # what the sources include
    key = hashlib.sha256(b"\0".join([source.read_bytes(), *headers, compiler.encode(), " ".join(cflags()).encode(),
                                     platform.machine().encode(), cpu_flags().encode()])).hexdigest()[:16]
    target = cache_root() / "native" / f"{name}-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    last_error = ""
    for extra in (OPENMP, []):  # a compiler without OpenMP (Apple clang) still builds it, one thread
        # build beside the target and rename: a concurrent rank never loads a half-written file
        with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".so", delete=False) as tmp:
            partial = Path(tmp.name)
        try:
            done = subprocess.run([compiler, *cflags(), *extra, str(source), "-o", str(partial)],
                                  capture_output=True, text=True, timeout=120)
            if done.returncode == 0:
                os.replace(partial, target)
                return target
            last_error = next((ln for ln in done.stderr.splitlines() if "error" in ln), done.stderr.strip()[:200])
        finally:
            partial.unlink(missing_ok=True)
    raise RuntimeError(f"{compiler} could not build {source.name}: {last_error}")


_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_DROPOUT = _P, _P, _I64, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_float, _INT
_DROPOUT_ADD = _P, _P, _P, _I64, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_float, _INT
_HEADS = (_P, _I64, _I64, _I64) * 3  # q, k, v: pointer, batch, head and token strides
_ATTENTION_ARGS = _I64, _I64, _INT, _INT, ctypes.c_float, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_float
_MASK = _P, _I64, _I64  # bytes, batch and query strides
_LONG_ARGS = _I64, _I64, _I64, _INT, ctypes.c_float, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_float  # B H T D ...
_LONG_FWD = (*_HEADS, *_MASK, *_LONG_ARGS, _P, _P, _INT)
_LONG_BWD = (*_HEADS, *_MASK, _P, _P, _P, *_LONG_ARGS, _P, _P, _P, _I64, _I64, _INT)
# each kernel file: its functions' argument types (all return void), the ABI version it must report, and
# optionally functions that only some CPUs' builds have (given their types where present)
KERNELS = {
    "short_attention": ({"fpt_short_attention_fwd": (*_HEADS, _P, *_ATTENTION_ARGS, _P, _P, _INT),
                         "fpt_short_attention_bwd": (*_HEADS, _P, _P, *_ATTENTION_ARGS, _P, _P, _P, _I64, _I64,
                                                     _INT)}, 2),
    "hash_dropout": ({"fpt_hash_dropout_f32": _DROPOUT, "fpt_hash_dropout_bf16": _DROPOUT,
                      "fpt_hash_dropout_add_f32": _DROPOUT_ADD, "fpt_hash_dropout_add_bf16": _DROPOUT_ADD,
                      "fpt_hash_dropout_f32_to_bf16": _DROPOUT}, 2),
    # the fp32 kernels need AVX-512; the bf16 ones (optional: AVX512-BF16) only where fpt_long_attention_bf16_ok()
    "long_attention": ({"fpt_long_attention_fwd_f32": _LONG_FWD, "fpt_long_attention_bwd_f32": _LONG_BWD}, 1,
                       {"fpt_long_attention_fwd_bf16": _LONG_FWD, "fpt_long_attention_bwd_bf16": _LONG_BWD}),
}


@functools.cache
def kernels(name: str) -> ctypes.CDLL | None:
    """fpt/csrc/NAME.c built and loaded, or None (turned off, or no build: warned once per file)."""
    if not enabled():
        return None
    functions, abi, *optional = KERNELS[name]
    try:
        lib = ctypes.CDLL(str(build(name)))
        if getattr(lib, f"fpt_{name}_abi")() != abi:
            raise RuntimeError("stale build (ABI mismatch)")
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        warnings.warn(f"fpt: CPU kernel {name!r} unavailable, using torch instead (same results, slower): {e}",
                      RuntimeWarning, stacklevel=2)
        return None
    missing = [fn_name for fn_name in functions if not hasattr(lib, fn_name)]
    if missing:  # built without the instructions it needs (e.g. no AVX512-BF16): only its probes are in it
        warnings.warn(f"fpt: CPU kernel {name!r} unavailable on this CPU, using torch instead (same results, "
                      f"slower): its build lacks {', '.join(missing)} (the instructions it needs are missing)",
                      RuntimeWarning, stacklevel=2)
        return None
    for fn_name, argtypes in {**functions, **(optional[0] if optional else {})}.items():
        if hasattr(lib, fn_name):
            fn = getattr(lib, fn_name)
            fn.argtypes, fn.restype = argtypes, None
    return lib
