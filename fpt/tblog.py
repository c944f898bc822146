"""`--tensorboard`: the scalars of metrics.jsonl also as TensorBoard event files in the run directory.

The events are written by torch.utils.tensorboard's SummaryWriter, which needs the `tensorboard` package
(the optional extra: pip install 'fpt[tensorboard]'); `tensorboard --logdir runs/` shows every run.
"""
from __future__ import annotations

import weakref
from pathlib import Path

from fpt.errors import FPTError

MISSING = "--tensorboard needs the tensorboard package: pip install 'fpt[tensorboard]'"


def summary_writer_class():
    """torch's SummaryWriter; one line naming the extra to install where tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch.utils.tensorboard imports the tensorboard package
        raise FPTError(MISSING) from None
    return SummaryWriter


class ScalarLog:
    """One run's event file: each metrics record's numbers, under the record's own names, at its step.

    `purge_step` is the first step this process logs: events a killed run wrote at or after it (a record
    whose checkpoint never landed) are dropped by TensorBoard, as --resume drops them from metrics.jsonl.
    """

    def __init__(self, run_dir: Path, purge_step: int):
        self.writer = summary_writer_class()(log_dir=str(run_dir), purge_step=purge_step)
        weakref.finalize(self, self.writer.close)  # closed with the experiment that holds it

    def write(self, record: dict) -> None:
        for name, value in record.items():
            if name != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(name, value, global_step=record["step"])
        self.writer.flush()  # on disk at every evaluation, as metrics.jsonl is
