"""Format `csv`: a header row, one column of token sequences, one of labels (integers, or class names in
sorted order); tokens are characters or whitespace-separated words, mapped to ids by the training file's
vocabulary (0 padding, 1 unknown)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fpt.datasets import read_table
from fpt.datasets.readers import where
from fpt.core.errors import FPTError
from fpt.tasks.base import TaskSpec, pad_flat
from fpt.tasks.custom.taskfile import FORMATS, IMAGE_SUFFIXES, class_names


class CsvFormat:
    """Mixed into CustomTask: `self` is the task."""

    name, kind, default_patch_size = "csv", "a CSV file", None

    @staticmethod
    def fits(path: Path) -> bool:
        return path.is_file() and path.suffix.lower() != ".npz" and path.suffix.lower() not in IMAGE_SUFFIXES

    def read_splits(self) -> dict:
        k = self.spec.num_classes if self.trained is not None else self.d.get("num_classes")
        texts = {split: self._tokenize(path, split) for split, path in self.files.items()}
        if self.trained is None:  # labels that are not all integers are class names, in sorted order
            self.classes = class_names(texts["train"][1])
        raw = {split: (toks, self._label_ids(labels, self.files[split], split, None if k is None else int(k)))
               for split, (toks, labels) in texts.items()}
        if self.trained is None:  # vocabulary from the training file: 0 padding, 1 unknown, then tokens in sorted order
            self.vocab = {t: i + 2 for i, t in enumerate(sorted({t for seq in raw["train"][0] for t in seq}))}
        splits = {split: {**self._encode(toks, self.files[split], split), "y": y} for split, (toks, y) in raw.items()}
        if self.trained is None:
            nc = self._classes({n: y for n, (_, y) in raw.items()}, what=lambda n: where(self.files[n], n),
                               row=lambda i: f"line {i + 2}")
            self.spec = TaskSpec(name=self.name, input_kind="tokens", vocab_size=len(self.vocab) + 2,
                                 seq_len=int(max(s["len"].max() for s in splits.values())), num_classes=nc, padded=True)
        return splits

    def _tokenize(self, path: Path, split: str | None, *, labels_optional: bool = False, ids: bool = False):
        """(token lists cut at max_len, label texts or None where optional and absent[, the `id` column's
        values or None]) of a CSV file."""
        cols = (str(self.d.get("sequence_column", "seq")), str(self.d.get("label_column", "label")), "id")
        mode, max_len = self._setting("tokenize"), int(self._setting("max_len"))
        if mode not in ("chars", "whitespace"):
            raise FPTError(f"tokenize must be chars or whitespace, got {mode!r}")
        seqs, labels, names = read_table(path, cols, split=split,
                                         optional=cols[1:] if labels_optional else cols[2:])
        toks = [t[:max_len] for t in (list(s) if mode == "chars" else s.split() for s in seqs)]
        return (toks, labels, names) if ids else (toks, labels)

    def _encode(self, toks: list[list[str]], path: Path, split: str | None) -> dict:
        """Token lists -> {"x": (N, width) ids padded with 0, "len": (N,)}, by the vocabulary (1: unknown).
        Read as a trained run's, sequences are cut to the longest the run was built for."""
        if any(len(t) == 0 for t in toks):
            i = next(i for i, t in enumerate(toks) if len(t) == 0)
            raise FPTError(f"{where(path, split)} line {i + 2}: an empty sequence")
        width = int(self._setting("max_len"))
        if self.trained is not None:
            width = self.spec.seq_len
            cut = sum(len(t) > width for t in toks)
            if cut:
                self.notes.append(f"{where(path, split)}: {cut} sequence(s) cut to {width} tokens, the longest "
                                  f"the run trained on")
                toks = [t[:width] for t in toks]
        lengths = np.array([len(t) for t in toks], dtype=np.int64)
        ids = np.fromiter((self.vocab.get(t, 1) for seq in toks for t in seq), dtype=np.int32, count=int(lengths.sum()))
        return {"x": pad_flat(ids, lengths, width, what=self.name).numpy(), "len": lengths}

    def read_input_arrays(self, path: Path) -> tuple[dict, list]:
        toks, labels, ids = self._tokenize(path, None, labels_optional=True, ids=True)
        y = self._label_ids(labels, path, None, self.spec.num_classes)
        arrays = {**self._encode(toks, path, None), "y": np.full(len(toks), -1) if y is None else y}
        return arrays, ids if ids is not None else list(range(len(toks)))  # the input's own id column, if any

    def read_value_arrays(self, values) -> dict:
        if not (isinstance(values, (list, tuple)) and values and all(isinstance(v, str) for v in values)):
            raise FPTError("inputs for a csv task: a list of strings")
        mode, max_len = self._setting("tokenize"), int(self._setting("max_len"))
        toks = [(list(v) if mode == "chars" else v.split())[:max_len] for v in values]
        return {**self._encode(toks, Path("<inputs>"), None), "y": np.full(len(toks), -1)}

    def format_encoding(self) -> dict:
        """What a run keeps beyond the task file: the vocabulary, tokens in id order from 2."""
        return {"vocab": sorted(self.vocab, key=self.vocab.get)}


FORMATS.register("csv", CsvFormat)
