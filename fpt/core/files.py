"""Files that survive kills and full disks (written atomically: the old version or the new, never half), and
one process per folder (an flock the OS drops with its process)."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

from fpt.core.errors import FPTError


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
