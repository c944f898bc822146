"""The task registry. Importing this package registers every built-in task."""
from __future__ import annotations

from typing import TYPE_CHECKING

from fpt.core.errors import FPTError
from fpt.tasks.base import TASKS, Batch, Task, TaskData, TaskSpec, patchify_images, patchify_sequence
from fpt.tasks import bits  # noqa: F401  (registers bit-memory, bit-xor)
from fpt.tasks import images  # noqa: F401  (registers mnist, cifar10, cifar10-lra)
from fpt.tasks import listops  # noqa: F401  (registers listops)
from fpt.tasks import homology  # noqa: F401  (registers homology)
from fpt.tasks import synthetic  # noqa: F401  (registers synthetic, for fpt bench)
from fpt.tasks.custom import CustomTask

if TYPE_CHECKING:
    from fpt.core.config import TrainConfig


def build_task(name: str, *, patch_size: int | None = None, **options) -> Task:
    """Instantiate the registered task `name` with its options; a `.yaml` path is a custom task file."""
    if name.endswith((".yaml", ".yml")):  # your own data (fpt/tasks/custom/)
        if patch_size is not None:
            raise FPTError("set patch_size inside the task file, not with --patch-size")
        return CustomTask(file=name, **options)
    cls = TASKS.get(name)
    if patch_size is not None:
        if "patch_size" not in cls.options:
            raise FPTError(f"task {name!r} has no patch size to set")
        options["patch_size"] = patch_size
    return cls(**options)


def task_from_config(cfg: TrainConfig) -> Task:
    """The task a config names (`cfg.task`, a registered name or a task file) with its patch size and options."""
    return build_task(cfg.task, patch_size=cfg.patch_size, **cfg.task_options)


__all__ = ["TASKS", "Batch", "Task", "TaskData", "TaskSpec", "build_task", "patchify_images", "patchify_sequence",
           "task_from_config"]
