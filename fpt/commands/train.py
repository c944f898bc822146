"""`fpt train`: one run from a YAML config and/or flags (flags win)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import typing

from fpt.config import TrainConfig, resolve


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One `--flag` per TrainConfig field, so the CLI and the config never drift apart."""
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = ",".join(default) if isinstance(default, tuple) else default
        parser.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper(),
                            help=f"(default: {shown}; type {getattr(hints[f.name], '__name__', hints[f.name])})")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return resolve(args.config, {k: v for k, v in vars(args).items() if k in names})


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train one FPT run", description=__doc__)
    p.add_argument("--config", "-c", help="YAML file of config keys; flags override it")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    add_config_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fpt.train import train

    result = train(config_from_args(args), resume=args.resume, progress=not args.quiet)
    print(json.dumps({k: v for k, v in result.items() if k not in ("config", "param_groups", "versions")}))
    return 0
