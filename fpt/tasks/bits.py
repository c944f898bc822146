"""The paper's synthetic bit tasks: Bit Memory and Bit XOR.

Training batches are drawn fresh every step (the data are unlimited); the
validation and test sets are drawn once per seed and stay fixed, so every
evaluation of a run scores the same examples.
"""
from __future__ import annotations

import torch

from fpt.core.errors import FPTError
from fpt.tasks.base import TASKS, Batch, Task, TaskBudget, TaskData, TaskSpec, patchify_sequence

EVAL_EXAMPLES = 1000
# Offsets that keep the train / val / test generators of one seed apart.
_SPLIT_STREAMS = {"val": 1_000_003, "test": 2_000_003}


class GeneratedData(TaskData):
    """Fixed eval splits; `train_batch` samples new examples from `sample`."""

    draws_train = True

    def __init__(self, spec: TaskSpec, sample, *, seed: int, eval_examples: int = EVAL_EXAMPLES):
        self.sample = sample
        splits = {"train": Batch(torch.empty(0), torch.empty(0, dtype=torch.long))}
        for split, offset in _SPLIT_STREAMS.items():
            splits[split] = sample(eval_examples, torch.Generator().manual_seed(seed * 7919 + offset))
        super().__init__(spec, splits)

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        return self.sample(batch_size, generator)


def _check_counts(task: str, opts: dict, names: tuple[str, ...]) -> None:
    """Counts in task_options are positive integers (one line, before any tensor is shaped from them)."""
    for name in names:
        value = opts[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise FPTError(f"{task}: task option {name} must be a positive integer, got {value!r}")


def _random_signs(shape, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=generator).float() * 2 - 1  # {-1, +1}


@TASKS.register("bit-memory")
class BitMemory(Task):
    """Memorise 5 random patterns, then recall the one a half-masked query shows.

    Input: 5 patterns of 1000 bits in {-1, +1}, then the query (one of them with
    each bit zeroed with probability 0.5): 6000 values, 120 tokens of 50. The
    last 1000 / patch tokens each predict their patch of the whole pattern.
    Copying the visible query bits and guessing the rest scores about 75%.
    """

    # NOTE: smoke shrinks the generated val/test sets (1000 -> 100 examples) to stay in minutes.
    budgets = {
        "smoke": TaskBudget(steps=20, eval_every=20, batch_size=8, target_accuracy=0.8,
                            task_options={"eval_examples": 100}),
        "cpu": TaskBudget(steps=2000, eval_every=200, target_accuracy=0.99),
        # cpu's recipe for a 12 x 768 body (MPNet): half the steps; the constant rate's gap shows by 1,000
        # (MiniLM's FPT reached 99% at steps 1,400-1,600, Random init never)
        "cpu-large": TaskBudget(steps=1000, eval_every=200, target_accuracy=0.99),
        "gpu": TaskBudget(steps=2000, eval_every=200, target_accuracy=0.99),
        "paper": TaskBudget(steps=50_000, eval_every=1000, target_accuracy=0.99),
    }
    options = {"n_bits": 1000, "n_patterns": 5, "patch_size": 50, "mask_prob": 0.5,
               "eval_examples": EVAL_EXAMPLES}
    paper_column = "bit_memory"

    def __init__(self, **options):
        super().__init__(**options)
        _check_counts("bit-memory", self.opts, ("n_bits", "n_patterns", "patch_size", "eval_examples"))
        if not 0 <= self.opts["mask_prob"] <= 1:
            raise FPTError(f"bit-memory: task option mask_prob must be in [0, 1], got {self.opts['mask_prob']!r}")
        n, p, k = self.opts["n_bits"], self.opts["patch_size"], self.opts["n_patterns"]
        patchify_sequence(torch.zeros(1, n), p, what=f"the {n}-bit patterns of bit-memory")  # validates p
        self.spec = TaskSpec(name="bit-memory", input_kind="continuous", token_dim=p,
                             seq_len=(k + 1) * n // p, num_classes=2,
                             output_tokens=n // p, targets_per_token=p)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        n, p, k = self.opts["n_bits"], self.opts["patch_size"], self.opts["n_patterns"]
        patterns = _random_signs((batch_size, k, n), generator)  # (B, k, n)
        which = torch.randint(0, k, (batch_size,), generator=generator)
        target = patterns[torch.arange(batch_size), which]  # (B, n)
        keep = torch.rand((batch_size, n), generator=generator) >= self.opts["mask_prob"]
        query = target * keep  # masked bits become 0
        x = torch.cat([patterns.reshape(batch_size, k * n), query], dim=1)  # (B, (k+1) n)
        x = patchify_sequence(x, p, what="bit-memory")  # (B, (k+1) n / p, p)
        y = ((target + 1) / 2).long()  # {-1, +1} -> {0, 1}
        return Batch(x, y)

    def load(self, *, seed: int, data_dir: str | None = None) -> TaskData:
        return GeneratedData(self.spec, self.sample, seed=seed, eval_examples=self.opts["eval_examples"])


@TASKS.register("bit-xor")
class BitXOR(Task):
    """Two n-bit strings in, their elementwise XOR out.

    Input: 2n values in {-1, +1} as 2n / patch tokens; the last n / patch
    tokens each predict `patch` bits of the XOR. Accuracy is per bit.
    """

    # NOTE: smoke shrinks the generated val/test sets (1000 -> 200 examples) to stay in minutes.
    budgets = {
        "smoke": TaskBudget(steps=60, eval_every=20, batch_size=16, target_accuracy=0.9,
                            task_options={"eval_examples": 200}),
        "cpu": TaskBudget(steps=1000, eval_every=100, target_accuracy=1.0),
        "cpu-large": TaskBudget(steps=1000, eval_every=100, target_accuracy=1.0),
        "gpu": TaskBudget(steps=1000, eval_every=100, target_accuracy=1.0),
        "paper": TaskBudget(steps=20_000, eval_every=500, target_accuracy=1.0),
    }
    options = {"n_bits": 5, "patch_size": 1, "eval_examples": EVAL_EXAMPLES}
    paper_column = "bit_xor"

    def __init__(self, **options):
        super().__init__(**options)
        _check_counts("bit-xor", self.opts, ("n_bits", "patch_size", "eval_examples"))
        n, p = self.opts["n_bits"], self.opts["patch_size"]
        patchify_sequence(torch.zeros(1, n), p, what=f"the {n}-bit strings of bit-xor")  # validates p
        self.spec = TaskSpec(name="bit-xor", input_kind="continuous", token_dim=p, seq_len=2 * n // p,
                             num_classes=2, output_tokens=n // p, targets_per_token=p)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        n, p = self.opts["n_bits"], self.opts["patch_size"]
        bits = torch.randint(0, 2, (batch_size, 2 * n), generator=generator)  # (B, 2n) in {0, 1}
        y = bits[:, :n] ^ bits[:, n:]  # (B, n)
        x = patchify_sequence(bits.float() * 2 - 1, p, what="bit-xor")  # (B, 2n / p, p)
        return Batch(x, y.long())

    def load(self, *, seed: int, data_dir: str | None = None) -> TaskData:
        return GeneratedData(self.spec, self.sample, seed=seed, eval_examples=self.opts["eval_examples"])
