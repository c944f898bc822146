"""`--tensorboard`: the scalars of metrics.jsonl also as TensorBoard event files in the run directory.

The events are written by torch.utils.tensorboard's SummaryWriter, which needs the `tensorboard` package
(the optional extra: pip install 'fpt[tensorboard]'); `tensorboard --logdir runs/` shows every run.
Tags are grouped by split, so TensorBoard shows one section each: `train/loss`, `train/accuracy`,
`train/lr` (the learning rate, where a record has `lr`), `val/accuracy`, `val/loss`, `test/...`,
`time/elapsed_s`. `write_hparams` adds the run's config and final figures to the HPARAMS dashboard.
"""
from __future__ import annotations

import json
import weakref
from pathlib import Path

from fpt.core.errors import FPTError

MISSING = "--tensorboard needs the tensorboard package: pip install 'fpt[tensorboard]'"
SPLITS = ("train", "val", "test")
# record keys that are not `<split>_<metric>`: their section and name
OTHER_TAGS = {"lr": "train/lr", "elapsed_s": "time/elapsed_s"}
HPARAM_METRICS = "hparams"  # the section of write_hparams' figures, apart from the series


def summary_writer_class():
    """torch's SummaryWriter; one line naming the extra to install where tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch.utils.tensorboard imports the tensorboard package
        raise FPTError(MISSING) from None
    return SummaryWriter


def tag(name: str) -> str:
    """The TensorBoard tag of a metrics.jsonl key: `val_accuracy` -> `val/accuracy`, `lr` -> `train/lr`;
    a key of no known split keeps its name."""
    split, _, metric = name.partition("_")
    if split in SPLITS and metric:
        return f"{split}/{metric}"
    return OTHER_TAGS.get(name, name)


def hparam_value(value):
    """A config value as TensorBoard's hparams take it (a number or a string); None is left out."""
    if isinstance(value, bool):  # torch would write it as the number 0 or 1
        return str(value).lower()
    if value is None or isinstance(value, (int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return json.dumps(value, sort_keys=True)  # a dict: task_options


class ScalarLog:
    """One run's event file: each metrics record's numbers, under grouped tags (`tag`), at its step.

    `purge_step` is the first step this process logs: events a killed run wrote at or after it (a record
    whose checkpoint never landed) are dropped by TensorBoard, as --resume drops them from metrics.jsonl.
    """

    def __init__(self, run_dir: Path, purge_step: int):
        self.writer = summary_writer_class()(log_dir=str(run_dir), purge_step=purge_step)
        weakref.finalize(self, self.writer.close)  # closed with the experiment that holds it

    def write(self, record: dict) -> None:
        for name, value in record.items():
            if name != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(tag(name), value, global_step=record["step"])
        self.writer.flush()  # on disk at every evaluation, as metrics.jsonl is

    def write_hparams(self, config: dict, final_metrics: dict, *, step: int | None = None) -> None:
        """The run's hyperparameters (its config, `TrainConfig.to_dict()`) and final figures (e.g.
        {"test_accuracy": 0.98, "best_val_accuracy": 0.99}) for TensorBoard's HPARAMS dashboard, in this
        run's own event file, so `tensorboard --logdir runs/` compares runs by their configs. The figures
        go under `hparams/<name>`, apart from the series `write` logs."""
        from torch.utils.tensorboard.summary import hparams

        params = {k: hparam_value(v) for k, v in config.items()}
        params = {k: v for k, v in params.items() if v is not None}
        metrics = {f"{HPARAM_METRICS}/{k}": float(v) for k, v in final_metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        experiment, session_start, session_end = hparams(params, metrics)
        file_writer = self.writer._get_file_writer()
        for summary in (experiment, session_start, session_end):
            file_writer.add_summary(summary, step)
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, global_step=step)
        self.writer.flush()
