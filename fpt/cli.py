"""`fpt` command line: one subcommand per module in `fpt.commands`.

Every `FPTError` (bad input, missing data or weights, a diverged run) becomes
one line on stderr and exit status 2; nothing is written after it.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from fpt.core.errors import FPTError

# Each module defines `add_parser(subparsers)`, which registers its subcommand
# and sets `func` (args -> exit code) as the parser default.
COMMAND_MODULES = ("train", "evaluate", "predict", "export", "describe", "backbones", "tasks", "reproduce", "data",
                   "bench")


def build_parser() -> argparse.ArgumentParser:
    import fpt

    parser = argparse.ArgumentParser(prog="fpt", description="Frozen Pretrained Transformers: train and "
                                     "compare FPT on non-language tasks.")
    parser.add_argument("--version", action="version", version=f"fpt {fpt.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"fpt.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FPTError as e:
        if not e.quiet:
            print(f"fpt: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fpt: interrupted (a run resumes from its last checkpoint with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
