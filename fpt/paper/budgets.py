"""Compute budgets for `fpt reproduce`: their names here, each task's cell on its own registry entry
(`Task.budgets` in fpt/tasks/, with the reason for each recipe beside it).

A budget gives each task its training length, evaluation interval and recipe, and says which tasks it
covers: a matrix cell whose task a budget does not cover is listed as skipped, never silently dropped.
Every row of one task gets the same budget (a row may pin its own learning rate: the LSTM's 3e-4, the
Full transformer's). Precision is the config's `auto` everywhere (fpt/models/precision.py): bf16 where the
device runs it faster, fp32 elsewhere.

- smoke: minutes on a 2-core CPU (CI runs it): the two bit tasks, a few dozen steps.
- cpu:   every task, each run about 45 minutes at most on a 2-core CPU with native bf16 (AVX512-BF16;
         roughly 3-5x that without). The recipes, and why each differs from the paper's where it does,
         are beside each task's cell. The 512- to 2000-token tasks cannot converge in that time: their rows
         are "not converged" in the report, beside the majority-class baseline.
- cpu-large: the cpu recipes for a 12 x 768 body (MPNet; GPT-2 small's shape), whose step costs 6-8x
         MiniLM's: the four short-sequence tasks of the second-backbone comparison, steps cut so that a run
         stays near cpu's 45 minutes (75-95 on the slower bf16 host), CIFAR-10 at a lower peak rate
         (below). Every row of a task still trains the same steps and recipe.
- gpu:   every task in about 10 minutes on one H100 (tools/gpu_results.sh runs the four table1 rows side by
         side); the same recipes as cpu, more examples per run.
- paper: the paper's step counts (Table 6's steps to converge, rounded up), for a GPU.
"""
from __future__ import annotations

from fpt.core.errors import FPTError
from fpt.tasks.base import TaskBudget  # noqa: F401  (where matrices and tests have always found it)

#: The budgets, each with what it is for. Each task's cells live on its registry entry (`Task.budgets`,
#: fpt/tasks/): a budget covers exactly the tasks that have a cell for it.
BUDGETS: dict[str, str] = {
    "smoke": "minutes on a 2-core CPU (CI runs it): the two bit tasks, a few dozen steps",
    "cpu": "every task, each run about 45 minutes at most on a 2-core CPU with native bf16",
    "cpu-large": "cpu's recipes for a 12 x 768 body (MPNet): the four short-sequence tasks, fewer steps",
    "gpu": "every task in about 10 minutes on one H100",
    "paper": "the paper's step counts (Table 6's steps to converge, rounded up), for a GPU",
}


def get_budget(name: str) -> dict[str, TaskBudget]:
    """The budget's cells by task, from the registered tasks' entries (`Task.budgets`)."""
    from fpt.tasks import TASKS

    if name not in BUDGETS:
        raise FPTError(f"unknown budget {name!r}; choose from: {', '.join(BUDGETS)}")
    return {task: cls.budgets[name] for task, cls in TASKS.items() if name in cls.budgets}


def budget_cells(budget: str | None) -> dict:
    """The budget's cells by task; {} for no budget or an unknown one (a report of a hand-made sweep)."""
    if not budget:
        return {}
    try:
        return get_budget(budget)
    except FPTError:
        return {}
