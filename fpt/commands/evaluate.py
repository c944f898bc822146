"""`fpt evaluate --run-dir R`: accuracy and loss of a trained run (its checkpoint) on a split of its task, or
on another task file of the same format (`--task-file`), read with the run's own vocabulary, classes and
preprocessing. Prints one JSON record."""
from __future__ import annotations

import argparse
import json
import sys


def add_inference_flags(p: argparse.ArgumentParser) -> None:
    """The flags `fpt evaluate` and `fpt predict` share."""
    p.add_argument("--run-dir", required=True, metavar="FOLDER", help="the run directory `fpt train` wrote")
    p.add_argument("--device", default="auto", help="auto (a GPU when there is one, else the CPU), cpu, cuda or "
                   "cuda:N (default: auto)")
    p.add_argument("--batch-size", type=int, metavar="N", help="examples per batch (default: the run's "
                   "eval_batch_size)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which weights: best (the "
                   "best validation step's, whose test accuracy result.json reports) or last (default: best)")


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="accuracy and loss of a trained run on a split or another data file",
                       description=__doc__)
    add_inference_flags(p)
    p.add_argument("--split", help="which examples: train, val, test, or all (every example of "
                   "the task file's data, nothing held out); default: test, or all with --task-file")
    p.add_argument("--task-file", metavar="FILE.yaml", help="another task file of the run's format (csv, "
                   "image_folder, npz), its data read as the run's inputs; default: the run's own task")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fpt.core.errors import FPTError
    from fpt.inference import SPLITS, load_run

    split = args.split or ("all" if args.task_file else "test")
    if split not in SPLITS:
        raise FPTError(f"unknown split {split!r}; choose from: {', '.join(SPLITS)}")
    run_ = load_run(args.run_dir, device=args.device, batch_size=args.batch_size, checkpoint=args.checkpoint)
    result = {**run_.evaluate(split, task_file=args.task_file), "weights": run_.weights}
    for note in result.pop("notes"):
        print(f"fpt: note: {note}", file=sys.stderr)
    print(json.dumps(result))
    return 0
