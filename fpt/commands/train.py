"""`fpt train`: one run from a YAML config and/or flags (flags win).

`--nproc N` trains data-parallel in N processes on this machine (PyTorch DDP, started with torchrun's
launcher); `torchrun --nproc-per-node N -m fpt train ...` does the same, and runs across machines.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import typing

from fpt.core.config import TrainConfig, resolve


# Where a field's `choices_from` metadata is looked up: (module, attribute, how the help names them).
# NOTE: config.py sits below the registries in the import graph, so the commands layer asks them.
CHOICE_SOURCES = {
    "tasks": ("fpt.tasks", "TASKS", "registered"),
    "backbones": ("fpt.backbones", "BACKBONES", "registered"),
    "models": ("fpt.core.rows", "MODELS", "choices"),
    "groups": ("fpt.core.groups", "TRAINABLE_GROUPS", "groups"),
    "lora_targets": ("fpt.core.groups", "LORA_TARGETS", "choices"),
}


def field_choices(f: dataclasses.Field) -> tuple[str, list[str]]:
    """(label, names) of the values a config field takes: its `choices`, or the names `choices_from` points at."""
    if "choices_from" in f.metadata:
        module, attribute, label = CHOICE_SOURCES[f.metadata["choices_from"]]
        return label, list(getattr(importlib.import_module(module), attribute))
    return "choices", list(f.metadata.get("choices", ()))


def _shown(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return ",".join(value) if isinstance(value, tuple) else str(value)


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One `--flag` per TrainConfig field, its help from the field's metadata, so the CLI and the config
    never drift apart. Booleans are switches (`--compile`, `--no-compile`); every flag defaults to None,
    so a flag not given leaves the YAML file's value (or the field's default) in place."""
    hints = typing.get_type_hints(TrainConfig)
    group = parser.add_argument_group("config keys", "each flag sets the YAML key of its name, underscores "
                                      "for dashes; flags override --config")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        text = f.metadata.get("help", "")  # tests/test_cli.py checks that every field has one
        label, choices = field_choices(f)
        if choices:
            text += f"; {label}: {', '.join(choices)}"
        if default not in (None, {}):
            text += f" (default: {_shown(default)})"
        text = text.replace("%", "%%")  # argparse %-formats help strings
        if hints[f.name] is bool:
            group.add_argument(flag, dest=f.name, default=None, action=argparse.BooleanOptionalAction, help=text)
        else:
            group.add_argument(flag, dest=f.name, default=None, metavar=f.metadata.get("metavar", f.name.upper()),
                               help=text)


def config_from_args(args: argparse.Namespace, *, base: dict | None = None) -> TrainConfig:
    """--config, then the flags given, over `base` (a resumed run's config.yaml)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return resolve(args.config, {k: v for k, v in vars(args).items() if k in names}, base=base)


def resume_config(args: argparse.Namespace) -> TrainConfig:
    """`--resume`: the run's own RUN_DIR/config.yaml, with --config and the flags given on top; `train`
    then refuses any of them that differs from the checkpoint's (but a larger --steps)."""
    from pathlib import Path

    from fpt.core.config import load_yaml

    run_dir = args.run_dir or (load_yaml(args.config).get("run_dir") if args.config else None)
    saved = (Path(run_dir) if run_dir else config_from_args(args).resolved_run_dir) / "config.yaml"
    return config_from_args(args, base=load_yaml(saved) if saved.is_file() else None)  # no run there: train says so


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train one FPT run", description=__doc__)
    p.add_argument("--config", "-c", help="YAML file of config keys; flags override it")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --run-dir from its checkpoint, with the run's own config.yaml; "
                        "flags given must agree with it, but --steps may grow")
    p.add_argument("--overwrite", action="store_true",
                   help="start the run in --run-dir over: delete its checkpoint, metrics and result first")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--nproc", type=int, metavar="N",
                   help="data-parallel processes on this machine (DDP via torchrun): at most one per GPU, "
                        "or per CPU core with --device cpu; batch_size must divide by N")
    add_config_flags(p)
    p.set_defaults(func=run)


def _worker_argv(args: argparse.Namespace) -> list[str]:
    """This command line without --nproc: what each torchrun worker runs."""
    argv = ["train"] + (["--config", args.config] if args.config else [])
    argv += ["--resume"] * args.resume + ["--overwrite"] * args.overwrite + ["--quiet"] * args.quiet
    for f in dataclasses.fields(TrainConfig):
        value, flag = getattr(args, f.name), f.name.replace("_", "-")
        if isinstance(value, bool):  # a switch: --compile / --no-compile
            argv.append(f"--{flag}" if value else f"--no-{flag}")
        elif value is not None:
            argv += [f"--{flag}", str(value)]
    return argv


def run(args: argparse.Namespace) -> int:
    from fpt.run.distributed import check_nproc, env_rank, launch
    from fpt.run.launch import train

    cfg = resume_config(args) if args.resume else config_from_args(args)
    if args.nproc is not None:
        check_nproc(cfg, args.nproc)
        if args.nproc > 1:
            return launch(_worker_argv(args), args.nproc)
    result = train(cfg, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    if env_rank() == 0:  # under torchrun, rank 0 speaks for every process
        print(json.dumps({k: v for k, v in result.items() if k not in ("config", "param_groups", "versions")}))
    return 0
