"""`fpt tasks list`: the registered tasks, the shape of their inputs and outputs, and where their data lives.

Your own data is a task too: `fpt train --task my-data.yaml` reads a YAML task file that names a format
(image_folder, csv or npz) and where its files are; fpt/tasks/custom.py describes every key.
"""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("tasks", help="list registered tasks", description=__doc__)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = actions.add_parser("list", help="list registered tasks: input, tokens, classes, data folder, options")
    ls.set_defaults(func=run_list)


def task_row(name: str, cls) -> tuple[str, str, str, str, str]:
    """(name, input, tokens, classes, data folder) of a registered task, at its default options."""
    spec = cls().spec
    kind = f"vectors of {spec.token_dim}" if spec.input_kind == "continuous" else f"ids, vocab {spec.vocab_size}"
    tokens = f"<= {spec.seq_len}" if spec.padded else str(spec.seq_len)
    classes = str(spec.num_classes) + (f" x {spec.num_targets} targets" if spec.num_targets > 1 else "")
    return name, kind, tokens, classes, cls.data_folder or "(generated)"


def run_list(args: argparse.Namespace) -> int:
    import yaml

    from fpt.datasets import data_root
    from fpt.tasks import TASKS

    header = ("TASK", "INPUT", "TOKENS", "CLASSES", "DATA")
    rows = [task_row(name, cls) for name, cls in TASKS.items()]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    line = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths)) + "  " + r[4]  # noqa: E731
    print(line(header))
    for row, (_, cls) in zip(rows, TASKS.items()):
        print(line(row))
        if cls.options:  # as --task-options takes them
            print("    options: " + yaml.safe_dump(cls.options, default_flow_style=True, sort_keys=False,
                                                   width=1000).strip())
    print(f"\nDATA is a folder under {data_root()}/ (--data-dir, else $FPT_DATA, else ./data);\n"
          "`fpt data prepare TASK` fetches or generates it")
    print("your own data: --task FILE.yaml (format image_folder, csv or npz; fpt/tasks/custom.py)")
    return 0
