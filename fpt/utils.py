"""Small shared helpers: seeding, device choice, versions, atomic file writes, folder locks."""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import json
import os
import platform
import random
import socket
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from fpt.errors import FPTError


def cache_root() -> Path:
    """$FPT_CACHE, default ~/.cache/fpt: prepared backbones (fpt/backbones/cache.py), built CPU kernels
    (fpt/native.py)."""
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
    AMX), which decides bf16's speed several-fold (fpt/precision.py)."""
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


class WriteFailed(FPTError, OSError):
    """A file could not be written (disk full, quota, permissions): the previous version, if any, is intact.
    An OSError too, so callers that shrug off a failed write (a cache) still do."""


def _write_atomic(path: Path, write: Callable[[Any], None]) -> None:
    """write(f) into PATH.tmp, fsync, rename over `path`: a kill leaves the old file or the new one, never half
    of one; a failed write (disk full, quota) removes the temporary file and keeps the old one."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        kept = "; the previous version is kept" if path.exists() else ""
        raise WriteFailed(f"cannot write {path}: {e.strerror or e}{kept}") from None


def write_bytes_atomic(path: Path, data: bytes) -> None:
    _write_atomic(path, lambda f: f.write(data))


def write_text_atomic(path: Path, text: str) -> None:
    _write_atomic(path, lambda f: f.write(text.encode()))


def write_json_atomic(path: Path, data: Any) -> None:
    """Write via a temporary file and rename, so a kill never leaves half a file."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


# ---- one process per folder ----------------------------------------------------------------------

LOCK_FILE = ".fpt.lock"


class FolderBusy(FPTError):
    """Another process holds the folder's lock."""


_held: dict[str, int] = {}  # lock file (real path) -> how many `hold_folder` blocks of this process hold it


@contextlib.contextmanager
def hold_folder(folder: Path, *, what: str = "run directory", hint: str = "or choose another --run-dir"
                ) -> Iterator[Path]:
    """Own `folder` (created if missing) for the block: an exclusive flock on FOLDER/.fpt.lock.

    A second process gets one line naming the holder's PID (FolderBusy). The OS drops the lock when
    its process dies, SIGKILL included, so it is never stale. Re-entrant within one process (a sweep
    holds each run directory around `train`, which holds it again). On leaving, the lock file is
    removed, and so are the folders this call created if they are still empty (bad input leaves
    nothing behind).
    """
    folder = Path(folder)
    path = folder / LOCK_FILE
    key = os.path.realpath(path)
    if key in _held:
        _held[key] += 1
        try:
            yield folder
        finally:
            _held[key] -= 1
        return
    created = _make_folder(folder, what)
    try:
        fd = _lock(path, folder, what=what, hint=hint)
    except BaseException:
        _remove_empty(folder, created)
        raise
    _held[key] = 1
    try:
        yield folder
    finally:
        del _held[key]
        if fd is not None:
            with contextlib.suppress(OSError):
                path.unlink()  # still locked: no other process can hold this file now
            os.close(fd)  # releases the lock
        _remove_empty(folder, created)


def _make_folder(folder: Path, what: str) -> Path | None:
    """mkdir -p `folder`; returns the topmost folder it created (None if it existed). One line on failure."""
    top = None
    for p in (folder, *folder.parents):
        if p.exists() or p.is_symlink():
            break
        top = p
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise FPTError(f"{what} {folder} is a file, not a folder") from None
    except NotADirectoryError:
        under = next((p for p in folder.parents if p.is_file()), None)
        raise FPTError(f"{what} {folder} lies under {under or 'a file'}, which is a file, not a folder") from None
    except OSError as e:
        raise FPTError(f"cannot create {what} {folder}: {e.strerror or e}") from None
    return top


def _remove_empty(folder: Path, top: Path | None) -> None:
    if top is None:
        return
    for p in (folder, *folder.parents):
        try:
            p.rmdir()  # only while empty
        except OSError:
            return
        if p == top:
            return


def _holder(fd: int) -> list[str]:
    """[PID, HOST] from a held lock file; the holder writes them just after it locks, so wait a moment
    for them when a second process arrives in between."""
    for _ in range(100):
        text = os.pread(fd, 256, 0).decode(errors="replace").split()
        if text:
            return text
        time.sleep(0.01)
    return []


def _lock(path: Path, folder: Path, *, what: str, hint: str) -> int | None:
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise FPTError(f"cannot write in {what} {folder}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            by = " on ".join([f"process {holder[0]}", *holder[1:2]]) if holder else "another process"
            raise FolderBusy(f"{what} {folder} is in use by {by} (lock {path}); wait for it to finish, "
                             f"{hint}") from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise FPTError(f"cannot lock {what} {folder}: {e.strerror or e}") from None
            os.close(fd)  # a filesystem without locks: go on unguarded, and say so
            warnings.warn(f"{folder}'s filesystem has no file locks: nothing stops a second process from "
                          f"writing into this {what}", stacklevel=3)
            return None
        # the previous holder may have removed the file between our open and our lock: lock the current one
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        mine = os.fstat(fd)
        if current is not None and (current.st_ino, current.st_dev) == (mine.st_ino, mine.st_dev):
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
    return fd
