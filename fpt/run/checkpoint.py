"""checkpoint.pt: written and read so that loading one can never run code.

A checkpoint holds only tensors and plain data (dicts, lists, tuples, numbers, strings): the trainable
weights (last and best-validation), the optimizer state, the run's state and every RNG state, the numpy
and Python ones as lists. It is read with `torch.load(weights_only=True)`, torch's restricted unpickler,
which refuses any other global before it is called, so a planted `__reduce__` payload is refused, never run.

Checkpoints of fpt before format 2 pickled numpy's RNG state as an ndarray. Those load too: exactly numpy's
array constructors are allowed for them (they build arrays, nothing else), after the file's globals were
listed without unpickling it. Anything else is refused in one line.
"""
from __future__ import annotations

import io
import pickle
import random
import warnings
from pathlib import Path

import numpy as np
import torch

from fpt.core.errors import FPTError, UnsafeFile

FORMAT = 2  # 2: RNG states as plain data, best-validation weights beside the last
# what a format-1 checkpoint (numpy's RNG state as an ndarray) needs beyond torch's allowlist
_NUMPY_ARRAY_GLOBALS = {"numpy._core.multiarray._reconstruct", "numpy.core.multiarray._reconstruct",
                        "numpy.ndarray", "numpy.dtype", "numpy.dtypes.UInt32DType"}


def rng_state(gen: torch.Generator) -> dict:
    """Every RNG a run draws from, as tensors and plain data (loadable with weights_only)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(), "data": gen.get_state(),
             "python": [version, list(internal), gauss],
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(state["data"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        np.random.set_state((numpy_state["kind"], np.asarray(numpy_state["keys"], dtype=np.uint32),
                             numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    else:  # format 1: numpy's own tuple
        np.random.set_state(numpy_state)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(obj: dict, path: Path) -> None:
    """Serialise in memory, then write atomically: a full disk is one OSError (WriteFailed), never torch's
    zip writer failing half-way, and no PATH.tmp is left behind."""
    from fpt.core.files import write_bytes_atomic

    buf = io.BytesIO()
    torch.save({**obj, "format": FORMAT}, buf)
    write_bytes_atomic(Path(path), buf.getvalue())


def _unsafe_globals(path: Path) -> list[str] | None:
    """The globals a checkpoint's pickle names beyond torch's allowlist, listed without unpickling it (a torch
    zip archive: torch lists them; a plain pickle: its opcodes are read, never run); None when the file is
    not a pickle at all (random bytes, a truncated file)."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a zip archive: perhaps a plain pickle
        pass
    import pickletools

    names, strings = [], []
    try:
        with open(path, "rb") as f:
            for op, arg, _ in pickletools.genops(f):
                if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                    strings.append(arg)
                elif op.name == "GLOBAL":
                    names.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                elif op.name in ("INST", "OBJ", "REDUCE") and not names:
                    names.append(op.name)
    except Exception:  # not a pickle
        return None
    return names


def load_checkpoint(path: Path, *, prefix: str = "", suffix: str = "") -> object:
    """torch.load with weights_only=True; format-1 checkpoints with numpy's array constructors allowed;
    one line (FPTError) for anything else, its payload never run."""
    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch's note on a plain pickle's protocol: the one line below says it
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # refused by the restricted unpickler: what does it name?
    except Exception as e:  # empty, truncated, random bytes: torch raises several kinds
        raise FPTError(f"{prefix}{path} is corrupt or truncated ({type(e).__name__}){suffix}") from None
    names = _unsafe_globals(path)
    if names is None:
        raise FPTError(f"{prefix}{path} is corrupt or truncated (UnpicklingError){suffix}")
    if names and set(names) <= _NUMPY_ARRAY_GLOBALS:  # fpt before format 2: numpy's RNG state
        allowed = [np.ndarray, np.dtype, np.dtypes.UInt32DType, np._core.multiarray._reconstruct]
        try:
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise FPTError(f"{prefix}{path} is corrupt or truncated ({type(e).__name__}){suffix}") from None
    if not names:  # a pickle that torch's unpickler refused, yet names nothing: not fpt's
        raise FPTError(f"{prefix}{path} is not an fpt checkpoint{suffix}")
    what = f" ({', '.join(sorted(names)[:3])})"
    raise UnsafeFile(f"{prefix}{path} holds executable content{what}, not only tensors and data: refused "
                   f"without running it (fpt's checkpoints never do; only load files you trust){suffix}")


def read_checkpoint(path: Path, keys: tuple[str, ...], *, prefix: str = "", suffix: str = "") -> dict:
    """A checkpoint.pt holding at least `keys`; one line (prefix, what is wrong, suffix) when it is empty,
    truncated, random bytes, executable or not fpt's. Resuming and `fpt.load_run` read checkpoints here."""
    ckpt = load_checkpoint(path, prefix=prefix, suffix=suffix)
    if not isinstance(ckpt, dict) or not all(k in ckpt for k in keys):
        raise FPTError(f"{prefix}{path} is not an fpt checkpoint{suffix}")
    return ckpt
