"""`synthetic`: Gaussian tokens with random labels, of any length and width, for `fpt bench`.

Nothing here can be learned: it exists so that step time can be measured at any
sequence length (the scaling table of docs/performance.md) without a dataset.
"""
from __future__ import annotations

import torch

from fpt.core.errors import FPTError
from fpt.tasks.base import TASKS, Batch, Task, TaskData, TaskSpec


class SyntheticData(TaskData):
    draws_train = True

    def __init__(self, spec: TaskSpec, *, seed: int, eval_examples: int):
        self.spec = spec
        g = torch.Generator().manual_seed(seed)
        splits = {"train": Batch(torch.empty(0), torch.empty(0, dtype=torch.long))}
        for split in ("val", "test"):
            splits[split] = self._draw(eval_examples, g)
        super().__init__(spec, splits)

    def _draw(self, n: int, generator: torch.Generator) -> Batch:
        s = self.spec
        x = torch.randn((n, s.seq_len, s.token_dim), generator=generator)  # (N, T, D)
        y = torch.randint(0, s.num_classes, (n, 1), generator=generator)
        return Batch(x, y)

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        return self._draw(batch_size, generator)


@TASKS.register("synthetic")
class Synthetic(Task):
    """Random (B, seq_len, token_dim) inputs, one random label of `num_classes` per example."""

    options = {"seq_len": 64, "token_dim": 16, "num_classes": 10, "eval_examples": 256}

    def __init__(self, **options):
        super().__init__(**options)
        o = self.opts
        if min(o["seq_len"], o["token_dim"], o["eval_examples"]) < 1 or o["num_classes"] < 2:
            raise FPTError(f"synthetic task needs seq_len, token_dim, eval_examples >= 1 and num_classes >= 2, got {o}")
        self.spec = TaskSpec(name="synthetic", input_kind="continuous", seq_len=int(o["seq_len"]),
                             token_dim=int(o["token_dim"]), num_classes=int(o["num_classes"]))

    def load(self, *, seed: int, data_dir: str | None = None) -> TaskData:
        return SyntheticData(self.spec, seed=seed, eval_examples=int(self.opts["eval_examples"]))
