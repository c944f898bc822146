"""`fpt data prepare TASK`: fetch (with checksums), generate or check a task's data, and cache the
decoded arrays. Data location: --data-dir, else $FPT_DATA, else ./data."""
from __future__ import annotations

import argparse


def preparable() -> list[str]:
    """The registered tasks that have data to prepare (their `prepare_data`); generated ones have none."""
    from fpt.tasks import TASKS

    return [name for name, cls in TASKS.items() if cls.prepare_data is not None]


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="prepare datasets (download, generate, cache)", description=__doc__)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    prep = actions.add_parser("prepare", help="download / generate / check one task's data")
    prep.add_argument("task", choices=preparable())
    prep.add_argument("--data-dir", default=None, help="data root (default: $FPT_DATA, else ./data)")
    prep.add_argument("--seed", type=int, default=0, help="ListOps generator seed (default 0)")
    prep.add_argument("--sizes", default=None, metavar="TRAIN,VAL,TEST",
                      help="ListOps split sizes (default 96000,2000,2000)")
    prep.set_defaults(func=run_prepare)


def run_prepare(args: argparse.Namespace) -> int:
    from fpt.tasks import TASKS

    print(TASKS.get(args.task).prepare_data(args.data_dir, seed=args.seed, sizes=args.sizes))
    return 0
