"""`fpt train`: one run from a YAML config and/or flags (flags win).

`--nproc N` trains data-parallel in N processes on this machine (PyTorch DDP, started with torchrun's
launcher); `torchrun --nproc-per-node N -m fpt train ...` does the same, and runs across machines.
"""
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
    p.add_argument("--nproc", type=int, metavar="N",
                   help="data-parallel processes on this machine (DDP via torchrun): at most one per GPU, "
                        "or per CPU core with --device cpu; batch_size must divide by N")
    add_config_flags(p)
    p.set_defaults(func=run)


def _worker_argv(args: argparse.Namespace) -> list[str]:
    """This command line without --nproc: what each torchrun worker runs."""
    argv = ["train"] + (["--config", args.config] if args.config else [])
    argv += ["--resume"] * args.resume + ["--quiet"] * args.quiet
    for f in dataclasses.fields(TrainConfig):
        if getattr(args, f.name) is not None:
            argv += ["--" + f.name.replace("_", "-"), str(getattr(args, f.name))]
    return argv


def run(args: argparse.Namespace) -> int:
    from fpt.distributed import check_nproc, env_rank, launch
    from fpt.train import train

    cfg = config_from_args(args)
    if args.nproc is not None:
        check_nproc(cfg, args.nproc)
        if args.nproc > 1:
            return launch(_worker_argv(args), args.nproc)
    result = train(cfg, resume=args.resume, progress=not args.quiet)
    if env_rank() == 0:  # under torchrun, rank 0 speaks for every process
        print(json.dumps({k: v for k, v in result.items() if k not in ("config", "param_groups", "versions")}))
    return 0
