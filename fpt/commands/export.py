"""`fpt export RUN --out DIR`: the trained model as a shareable folder: model.safetensors (the trained
tensors of the reported, best-validation weights; nothing executable), config.json (the fpt config, the task's
sizes and vocabulary or class names, the backbone's name and weight hash, the metrics and their splits) and
a README.md model card. `fpt.load_run(DIR)`, `fpt evaluate --run-dir DIR` and `fpt predict --run-dir DIR`
take the folder on any machine that has the backbone."""
from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="a trained run as model.safetensors + config.json + a model card",
                       description=__doc__)
    p.add_argument("run_dir", metavar="RUN", help="the run directory `fpt train` wrote")
    p.add_argument("--out", required=True, metavar="DIR", help="a new (or empty) folder to write")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which weights: best (the "
                   "best validation step's, whose test accuracy result.json reports) or last (default: best)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fpt.inference.export import export_run

    out = export_run(args.run_dir, args.out, checkpoint=args.checkpoint)
    print(f"fpt: exported {args.run_dir} -> {out} (model.safetensors, config.json, README.md)", file=sys.stderr)
    return 0
