"""The task interface: a spec (sizes the model is built from) and in-memory data.

A task is a registered factory `(options) -> Task`. `Task.spec` says everything
the model needs (token width or vocabulary, sequence length, classes, how many
tokens the output is read from); `Task.load` returns a `TaskData` holding every
split as tensors, which assembles training batches itself (vectorised, seeded
by the generator it is given) so the training loop never touches samples.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from fpt.core.errors import FPTError
from fpt.core.registry import Registry


@dataclass(frozen=True)
class TaskSpec:
    """Sizes the FPT model is derived from; nothing here is configured twice."""

    name: str
    input_kind: str  # "continuous": tokens are vectors of `token_dim`; "tokens": ids < `vocab_size`
    seq_len: int  # (maximum) number of tokens
    num_classes: int  # classes of each target
    token_dim: int = 0  # width of one continuous token (a patch of values)
    vocab_size: int = 0  # size of the discrete vocabulary, id 0 is padding
    output_tokens: int = 1  # the output is read from the last `output_tokens` real tokens
    targets_per_token: int = 1  # each read token predicts this many targets
    padded: bool = False  # variable-length sequences, padded at the end and masked

    @property
    def num_targets(self) -> int:
        return self.output_tokens * self.targets_per_token



@dataclass(frozen=True)
class TaskBudget:
    """One task's cell of a compute budget (fpt/paper/budgets.py): how long and with which recipe every row of a
    matrix trains on it. Every row of one task gets the same cell (a row may pin its own learning rate)."""

    steps: int
    eval_every: int
    batch_size: int = 32
    target_accuracy: float = 0.99  # "converged" for the steps-to-converge plot and the compute table
    task_options: dict | None = None  # e.g. smaller held-out sets for the synthetic tasks in `smoke`
    precision: str | None = None  # None: the config's (auto: fpt/models/precision.py)
    # the training recipe where a budget sets one; a matrix row's own lr (and --lr-sweep) still wins
    lr: float | None = None
    lr_schedule: str | None = None
    warmup_steps: int = 0
    dropout: float | None = None

@dataclass
class Batch:
    x: torch.Tensor  # (B, T, token_dim) float, or (B, T) long ids
    y: torch.Tensor  # (B, num_targets) long
    lengths: torch.Tensor | None = None  # (B,) real tokens per row when padded

    def to(self, device: torch.device, non_blocking: bool = False) -> "Batch":
        move = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        return Batch(move(self.x), move(self.y), move(self.lengths))

    def __len__(self) -> int:
        return self.y.shape[0]


class TaskData:
    """Every split of one task, in memory. Subclasses override `train_batch` to augment or generate."""

    #: True where `train_batch` draws fresh examples (bit tasks, synthetic): no stored training split to check
    draws_train: bool = False

    def __init__(self, spec: TaskSpec, splits: dict[str, Batch], *, train_split: str = "train"):
        self.spec = spec
        self.splits = splits
        self.train_split = train_split
        self.notes: list[str] = []  # what a reader of the result must know (truncation, subsets)
        self.sources: dict[str, str] = {}  # split -> its file, as messages name it: 'data/x.csv' (split val)
        self.validated = False  # by `validate`, or by a loader that checked each file as it read it
        # what encoding new inputs as a run's needs from its training data (a task file's vocabulary, classes
        # and sizes): training keeps it in RUN_DIR/task.json, fpt/inference/__init__.py reads it; {} for built-in tasks
        self.encoding: dict = {}

    def model_ready(self, split: str) -> bool:
        """Whether the split holds inputs as the model takes them (ImageData keeps its training images raw)."""
        return True

    def ready(self, split: str) -> Batch:
        """The split as the model takes it (what `fpt evaluate` runs on any split)."""
        return self.splits[split]

    def validate(self) -> None:
        """Check every stored split once, at load, in one vectorised pass (`check_split`), and that every
        split's inputs have the same shape. One line naming the file, the split and the first bad row."""
        if self.validated:
            return
        seen, ref = set(), None
        for name, batch in self.splits.items():
            if (name == self.train_split and self.draws_train) or id(batch) in seen:
                continue  # a placeholder; or a split that is another one (homology's test without a test file)
            seen.add(id(batch))
            at = self.sources.get(name) or f"task {self.spec.name} (split {name})"
            ready = self.model_ready(name)
            check_split(batch, self.spec, at=at, model_ready=ready)
            if ready:
                shape = tuple(batch.x.shape[1:])
                if ref is None:
                    ref = (name, shape)
                elif shape != ref[1]:
                    raise FPTError(f"{at}: inputs of shape {shape}, split {ref[0]}'s are {ref[1]}: every split "
                                   f"needs the same shape")
        self.validated = True

    def fingerprint(self) -> str:
        """sha256 (16 hex digits) of every stored split's tensors and the encoding: what a run trained and
        was validated on, so that `--resume` refuses when the data changed (an edited CSV remaps ids)."""
        import hashlib
        import json

        encoding = {k: v for k, v in self.encoding.items() if k != "path"}  # where it lies is not what it is
        h = hashlib.sha256(json.dumps(encoding, sort_keys=True, default=str).encode())
        seen = set()
        for name in sorted(self.splits):
            batch = self.splits[name]
            if (name == self.train_split and self.draws_train) or id(batch) in seen:
                continue  # a placeholder (generated from the seed), or a split that is another one
            seen.add(id(batch))
            h.update(name.encode())
            for t in (batch.x, batch.y, batch.lengths):
                if t is not None:
                    h.update(str((tuple(t.shape), str(t.dtype))).encode())
                    h.update(t.contiguous().view(torch.uint8).numpy() if t.numel() else b"")
        return h.hexdigest()[:16]

    @property
    def eval_splits(self) -> list[str]:
        return [s for s in self.splits if s != self.train_split]

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        data = self.splits[self.train_split]
        idx = torch.randint(len(data), (batch_size,), generator=generator)
        return Batch(data.x[idx], data.y[idx], None if data.lengths is None else data.lengths[idx])

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        if split not in self.splits:
            raise FPTError(f"task {self.spec.name!r} has no split {split!r}; it has: {', '.join(self.splits)}")
        data = self.splits[split]
        for i in range(0, len(data), batch_size):
            s = slice(i, i + batch_size)
            yield Batch(data.x[s], data.y[s], None if data.lengths is None else data.lengths[s])


def _first(bad: torch.Tensor) -> int:
    """The first row (index along dim 0) where `bad` holds anywhere."""
    return int(bad.reshape(len(bad), -1).any(1).nonzero()[0, 0])


def _check_range(values: torch.Tensor, upper: int, at: str, message: str) -> None:
    """Every value in 0..upper-1, else one line naming the first bad row: message.format(value, upper - 1)."""
    lo, hi = torch.aminmax(values)
    if lo < 0 or hi >= upper:
        outside = (values < 0) | (values >= upper)
        i = _first(outside)
        raise FPTError(f"{at} row {i}: " + message.format(int(values[i][outside[i]][0]), upper - 1))


def check_split(b: Batch, spec: TaskSpec, *, at: str, model_ready: bool = True) -> None:
    """One split against its task's spec, vectorised (reductions first; rows are searched only on failure):
    at least one example; labels (N, targets) integers in 0..C-1; inputs (N, T, D) finite floats, or (N, T)
    token ids in 0..V-1 with lengths in 1..seq_len. `at` names the file and split in the one-line error."""
    n, x, y = len(b.y), b.x, b.y
    if n == 0:
        raise FPTError(f"{at}: no examples: every split needs at least one")
    if len(x) != n or (b.lengths is not None and len(b.lengths) != n):
        raise FPTError(f"{at}: {len(x)} inputs for {n} labels")
    if y.is_floating_point() or tuple(y.shape[1:]) != (spec.num_targets,):
        raise FPTError(f"{at}: labels {y.dtype} {tuple(y.shape)}, expected ({n}, {spec.num_targets}) integers")
    _check_range(y, spec.num_classes, at, "label {} out of range 0..{}")
    if not model_ready:
        return
    if spec.input_kind == "continuous":
        if not x.is_floating_point() or tuple(x.shape[1:]) != (spec.seq_len, spec.token_dim):
            raise FPTError(f"{at}: inputs {x.dtype} {tuple(x.shape)}, expected ({n}, {spec.seq_len}, "
                           f"{spec.token_dim}) floats")
        if not torch.isfinite(x.sum()):  # NaN or inf anywhere make the sum non-finite (or a finite overflow)
            bad = ~torch.isfinite(x)
            if bad.any():
                i = _first(bad)
                raise FPTError(f"{at} row {i}: feature {x[i][bad[i]][0].item()}: features must be finite")
        return
    if x.is_floating_point() or x.dim() != 2:
        raise FPTError(f"{at}: inputs {x.dtype} {tuple(x.shape)}, expected ({n}, T) integer token ids")
    _check_range(x, spec.vocab_size, at, "token id {} outside the vocabulary 0..{}")
    if b.lengths is not None:
        top = min(spec.seq_len, x.shape[1])
        lo, hi = torch.aminmax(b.lengths)
        if lo < 1 or hi > top:
            i = _first((b.lengths < 1) | (b.lengths > top))
            raise FPTError(f"{at} row {i}: length {int(b.lengths[i])} outside 1..{top}")


class Task:
    """A registered task. Subclasses set `spec` in `__init__` and implement `load`."""

    spec: TaskSpec
    #: Options this task accepts (from the config's `task_options`), with defaults.
    options: dict = {}
    #: Where `load` reads the task's files, under the data root (--data-dir, $FPT_DATA, ./data); None: generated.
    data_folder: str | None = None
    #: The task's column in fpt/paper/reference/paper_results.csv (fpt/paper/report.py); None: no paper figure.
    paper_column: str | None = None
    #: `fpt data prepare TASK`: a classmethod `prepare_data(data_dir, *, seed, sizes) -> str` that downloads,
    #: generates or checks the data and returns the line to print; None: nothing to prepare (generated tasks).
    prepare_data = None
    #: `fpt reproduce` budget cells for this task, {budget name (fpt/paper/budgets.py): TaskBudget}: its steps,
    #: evaluation and recipe in each budget that covers it, each with its reason beside it.
    budgets: dict = {}

    def __init__(self, **options):
        unknown = set(options) - set(self.options)
        if unknown:
            raise FPTError(f"task {type(self).__name__} got unknown option(s) {sorted(unknown)}; "
                           f"it accepts: {sorted(self.options) or 'none'}")
        self.opts = {**self.options, **options}

    def load(self, *, seed: int, data_dir: str | None = None) -> TaskData:
        raise NotImplementedError


TASKS: Registry[type[Task]] = Registry("task")


def patchify_sequence(x: torch.Tensor, patch: int, *, what: str) -> torch.Tensor:
    """(B, N) -> (B, N / patch, patch); the patch must divide N."""
    n = x.shape[-1]
    if patch <= 0 or n % patch:
        raise FPTError(f"patch size {patch} does not divide the {n} values of {what}")
    return x.reshape(*x.shape[:-1], n // patch, patch)


def patchify_images(x: torch.Tensor, patch: int, *, what: str) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/p * W/p, C*p*p), patches in row-major order; p must divide H and W."""
    b, c, h, w = x.shape
    if patch <= 0 or h % patch or w % patch:
        raise FPTError(f"patch size {patch} does not divide the {h}x{w} images of {what}")
    x = x.reshape(b, c, h // patch, patch, w // patch, patch)  # (B, C, H/p, p, W/p, p)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, H/p, W/p, C, p, p)
    return x.reshape(b, (h // patch) * (w // patch), c * patch * patch)


class PaddedTokenData(TaskData):
    """Variable-length token ids stored compactly (uint8 / int16, padded with 0 at the end).

    Batches come out as long ids trimmed to their longest row: padding is masked anyway, so the
    columns past every row's end are dead compute.
    """

    def _batch(self, data: Batch, idx) -> Batch:
        lengths = data.lengths[idx]
        t = max(int(lengths.max()), 1) if len(lengths) else 1
        return Batch(data.x[idx, :t].long(), data.y[idx], lengths)

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        data = self.splits[self.train_split]
        return self._batch(data, torch.randint(len(data), (batch_size,), generator=generator))

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        if split not in self.splits:
            raise FPTError(f"task {self.spec.name!r} has no split {split!r}; it has: {', '.join(self.splits)}")
        data = self.splits[split]
        for i in range(0, len(data), batch_size):
            yield self._batch(data, slice(i, i + batch_size))


def pad_flat(ids, lengths, seq_len: int, *, what: str) -> torch.Tensor:
    """Flat ids (numpy, concatenated rows) + lengths -> (N, seq_len) ids padded with 0 at the end, vectorised."""
    import numpy as np

    n = len(lengths)
    if n and lengths.max() > seq_len:
        raise FPTError(f"a sequence of {what} has {lengths.max()} tokens, more than {seq_len}")
    x = np.zeros((n, seq_len), dtype=ids.dtype)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    row = np.repeat(np.arange(n), lengths)
    col = np.arange(len(ids)) - np.repeat(starts, lengths)
    x[row, col] = ids
    return torch.from_numpy(x)
