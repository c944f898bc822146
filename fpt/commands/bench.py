"""`fpt bench`: training and evaluation throughput, peak memory and MFU of fpt's loop against a
reference loop built like the paper's code, in one run on this device (see fpt/bench.py)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from fpt.commands.train import add_config_flags, config_from_args
from fpt.core.config import BENCH_VARIANTS


def _ints(text: str) -> list[int]:
    from fpt.core.errors import FPTError

    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise FPTError(f"expected comma-separated integers, got {text!r}") from e


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="throughput, memory and MFU of fpt's loop vs the paper's", description=__doc__)
    p.add_argument("--config", "-c", help="YAML file of config keys; flags override it")
    p.add_argument("--bench-steps", type=int, default=5, help="timed training steps per loop (median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--eval-batches", type=int, default=2, help="evaluation batches timed")
    p.add_argument("--precisions", default=",".join(BENCH_VARIANTS),
                   help="variants of fpt's loop to time: a precision, optionally +compile (torch.compile)")
    p.add_argument("--no-reference", action="store_true", help="skip the reference loop")
    p.add_argument("--scaling", metavar="SEQ_LENS", help="instead: fpt's step over synthetic inputs of these "
                   "lengths (e.g. 64,256,1024) x --scaling-batches")
    p.add_argument("--scaling-batches", default="8,32", help="batch sizes for --scaling")
    p.add_argument("--time-to-accuracy", type=float, metavar="ACC", help="instead: train both loops with the "
                   "config's recipe (--steps, --lr, --lr-schedule, ...) until the test accuracy reaches ACC "
                   "(e.g. 0.97), testing every --eval-every steps; prints the wall time of each")
    p.add_argument("--out", help="also write the figures to this JSON file")
    add_config_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fpt.bench import run_bench, run_scaling, run_time_to_accuracy
    from fpt.core.errors import FPTError

    cfg = config_from_args(args)
    if min(args.bench_steps, args.eval_batches) < 1 or args.warmup < 0:
        raise FPTError("--bench-steps and --eval-batches must be at least 1, --warmup at least 0")
    if args.time_to_accuracy is not None:
        result = {"time_to_accuracy": run_time_to_accuracy(cfg, args.time_to_accuracy,
                                                           reference=not args.no_reference)}
    elif args.scaling:
        result = {"scaling": run_scaling(cfg, seq_lens=_ints(args.scaling), batch_sizes=_ints(args.scaling_batches),
                                         steps=args.bench_steps, warmup=args.warmup)}
    else:
        precisions = tuple(p.strip() for p in args.precisions.split(",") if p.strip())
        result = run_bench(cfg, steps=args.bench_steps, warmup=args.warmup, eval_batches=args.eval_batches,
                           precisions=precisions, reference=not args.no_reference)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0
