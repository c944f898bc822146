"""Where data lives, checksums, downloads and the decoded-array cache.

Data location: `--data-dir` (the config's `data_dir`), else `$FPT_DATA`, else `./data`.
Every task reads from a subfolder of it named after the dataset (`mnist/`, `cifar10/`, ...).
"""
from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

import numpy as np

from fpt.core.errors import FPTError


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """`--data-dir` > $FPT_DATA > ./data."""
    return Path(data_dir or os.environ.get("FPT_DATA") or "data")


def dataset_dir(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The folder of one dataset: ROOT/name, or ROOT itself when it already holds the files."""
    return data_root(data_dir) / name


def find_first(folder: Path, candidates: list[str], *, what: str, hint: str = "") -> Path:
    """The first of `candidates` present in `folder`; else one line naming them all and the folder."""
    for name in candidates:
        if (folder / name).exists():
            return folder / name
    tail = f"; {hint}" if hint else ""
    raise FPTError(f"{what}: none of {', '.join(candidates)} found in {str(folder)!r}{tail}")


def file_digest(path: Path, algo: str = "md5") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_digest(path: Path, expected: str, algo: str = "md5") -> None:
    got = file_digest(path, algo)
    if got != expected:
        raise FPTError(f"checksum mismatch for {str(path)!r}: {algo} {got}, expected {expected} "
                       "(corrupt or partial download; delete it and prepare again)")


def download(url: str, dest: Path, *, md5: str | None = None, timeout: float = 30.0) -> Path:
    """Fetch `url` to `dest` (atomically) and verify its md5; one-line error when offline."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
            while chunk := r.read(1 << 20):
                f.write(chunk)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise FPTError(f"could not download {url} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                       f"put the file in {str(dest.parent)!r} by hand") from e
    if md5:
        try:
            check_digest(tmp, md5)
        except FPTError:
            tmp.unlink(missing_ok=True)
            raise
    tmp.replace(dest)
    return dest


# ---- cache of decoded arrays -------------------------------------------------------------------

def cache_path(folder: Path, key: str) -> Path:
    return folder / f"fpt-cache-{key}.npz"


def _sources_stamp(sources: list[Path]) -> np.ndarray:
    # size and mtime of every source file: a changed source invalidates the cache
    return np.array([f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}" for p in sources])


def load_cached(folder: Path, key: str, sources: list[Path]) -> dict[str, np.ndarray] | None:
    """The cached arrays for `key`, or None when absent, stale or unreadable."""
    path = cache_path(folder, key)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception:  # NOTE: a corrupt cache is just rebuilt from the sources
        return None
    stamp = arrays.pop("__sources__", None)
    if stamp is None or stamp.tolist() != _sources_stamp(sources).tolist():
        return None
    return arrays


def save_cached(folder: Path, key: str, sources: list[Path], arrays: dict[str, np.ndarray]) -> Path | None:
    """Write the decoded arrays beside the sources (silently skipped on a read-only folder)."""
    path = cache_path(folder, key)
    tmp = path.with_name(path.name + ".part.npz")
    try:
        np.savez(tmp, __sources__=_sources_stamp(sources), **arrays)
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)
        return None
    return path
