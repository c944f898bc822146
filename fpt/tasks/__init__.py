"""The task registry. Importing this package registers every built-in task."""
from fpt.tasks.base import TASKS, Batch, Task, TaskData, TaskSpec, build_task, patchify_images, patchify_sequence
from fpt.tasks import bits  # noqa: F401  (registers bit-memory, bit-xor)
from fpt.tasks import images  # noqa: F401  (registers mnist, cifar10, cifar10-lra)
from fpt.tasks import listops  # noqa: F401  (registers listops)
from fpt.tasks import homology  # noqa: F401  (registers homology)
from fpt.tasks import synthetic  # noqa: F401  (registers synthetic, for fpt bench)

__all__ = ["TASKS", "Batch", "Task", "TaskData", "TaskSpec", "build_task", "patchify_images", "patchify_sequence"]
