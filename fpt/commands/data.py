"""`fpt data prepare TASK`: fetch (with checksums), generate or check a task's data, and cache the
decoded arrays. Data location: --data-dir, else $FPT_DATA, else ./data."""
from __future__ import annotations

import argparse

PREPARABLE = ("mnist", "cifar10", "cifar10-lra", "listops", "homology")


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="prepare datasets (download, generate, cache)", description=__doc__)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    prep = actions.add_parser("prepare", help="download / generate / check one task's data")
    prep.add_argument("task", choices=PREPARABLE)
    prep.add_argument("--data-dir", default=None, help="data root (default: $FPT_DATA, else ./data)")
    prep.add_argument("--seed", type=int, default=0, help="ListOps generator seed (default 0)")
    prep.add_argument("--sizes", default=None, metavar="TRAIN,VAL,TEST",
                      help="ListOps split sizes (default 96000,2000,2000)")
    prep.set_defaults(func=run_prepare)


def run_prepare(args: argparse.Namespace) -> int:
    from fpt.errors import FPTError

    if args.task == "mnist":
        from fpt.tasks.images import prepare_mnist
        print(prepare_mnist(args.data_dir))
    elif args.task in ("cifar10", "cifar10-lra"):
        from fpt.tasks.images import prepare_cifar
        print(prepare_cifar(args.data_dir))
    elif args.task == "listops":
        from fpt.tasks.listops import SPLITS, load_listops_arrays, prepare_listops
        sizes = None
        if args.sizes:
            try:
                sizes = dict(zip(SPLITS, (int(v) for v in args.sizes.split(","))))
            except ValueError as e:
                raise FPTError(f"--sizes must be three integers TRAIN,VAL,TEST, got {args.sizes!r}") from e
            if len(sizes) != 3 or min(sizes.values()) < 1:
                raise FPTError(f"--sizes must be three positive integers TRAIN,VAL,TEST, got {args.sizes!r}")
        print(prepare_listops(args.data_dir, seed=args.seed, sizes=sizes))
        load_listops_arrays(args.data_dir, paper=False)  # tokenise once and cache
    elif args.task == "homology":
        from fpt.tasks import build_task
        data = build_task("homology").load(seed=0, data_dir=args.data_dir)
        counts = ", ".join(f"{s} {len(b)}" for s, b in data.splits.items())
        print(f"remote homology: {counts}; {'; '.join(data.notes) or 'no sequence over 1024'}")
    return 0
