"""The task registry. Importing this package registers every built-in task."""
from fpt.tasks.base import TASKS, Batch, Task, TaskData, TaskSpec, build_task, patchify_images, patchify_sequence
from fpt.tasks import bits  # noqa: F401  (registers bit-memory, bit-xor)

__all__ = ["TASKS", "Batch", "Task", "TaskData", "TaskSpec", "build_task", "patchify_images", "patchify_sequence"]
