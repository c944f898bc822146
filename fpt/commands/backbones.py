"""`fpt backbones list`: the registered backbones and where their weights come from."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("backbones", help="list registered backbones", description=__doc__)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = actions.add_parser("list", help="list registered backbones")
    ls.set_defaults(func=run_list)


def run_list(args: argparse.Namespace) -> int:
    from fpt.backbones import describe_sources

    for name, description in describe_sources():
        print(f"{name:<14} {description}")
    return 0
