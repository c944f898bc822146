"""`fpt predict --run-dir R INPUT`: one prediction per example of INPUT (the predicted label and every
class's probability) from a trained run. INPUT is in the format of the run's task file: a CSV (the label
column optional), a folder of images (directly in it or in class subfolders) or an .npz (x; optional lengths
and y), read with the run's own vocabulary, classes and preprocessing. Writes CSV, or JSON lines where --out
ends in .jsonl; to stdout without --out."""
from __future__ import annotations

import argparse
import sys

from fpt.commands.evaluate import add_inference_flags


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="predictions of a trained run for new inputs", description=__doc__)
    add_inference_flags(p)
    p.add_argument("input", metavar="INPUT", help="a CSV file, a folder of images, or an .npz file")
    p.add_argument("--out", metavar="FILE", help="write the predictions here (.jsonl: JSON lines; else CSV) "
                   "instead of stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fpt.inference import load_run, write_predictions

    run_ = load_run(args.run_dir, device=args.device, batch_size=args.batch_size, checkpoint=args.checkpoint)
    data, names = run_.encode(args.input)
    rows = run_.predict((data, names))
    text = write_predictions(rows, run_.classes or run_.spec.num_classes, args.out)
    for note in data.notes:
        print(f"fpt: note: {note}", file=sys.stderr)
    labelled = [r for r in rows if "label" in r]
    accuracy = (f"; accuracy {sum(r['label'] == r['predicted'] for r in labelled) / len(labelled):.4f} on the "
                f"{len(labelled)} labelled" if labelled else "")
    if args.out is None:
        sys.stdout.write(text)
    print(f"fpt: {len(rows)} predictions{' -> ' + args.out if args.out else ''}{accuracy}", file=sys.stderr)
    return 0
