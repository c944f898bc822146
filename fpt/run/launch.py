"""`train(cfg)`: the one entry to training. One process runs fpt/run/loop.py; one of torchrun's processes
(`fpt train --nproc N`) runs the same steps data-parallel (fpt/run/distributed.py). The caller picks here; the
loop never imports the data-parallel code."""
from __future__ import annotations

import os

from fpt.core.config import TrainConfig


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = True) -> dict:
    """Train one run to `cfg.steps` (or early stop) and return its result record.

    `resume` continues the run in `cfg.run_dir` from its checkpoint; `overwrite` deletes what the run
    directory holds and starts over. The run directory is locked for the whole run (fpt.core.files.hold_folder).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # one of torchrun's processes: the same steps, data-parallel
        from fpt.run.distributed import train_data_parallel

        return train_data_parallel(cfg, resume=resume, overwrite=overwrite, progress=progress)
    from fpt.run.loop import train as train_one_process

    return train_one_process(cfg, resume=resume, overwrite=overwrite, progress=progress)
