"""Your own data as a task, defined by a YAML file: `fpt train --task my-data.yaml`. One file per format
(csv.py, npz.py, image_folder.py: each its reader, its reading of new inputs and values, one `FORMATS`
registry line); taskfile.py: the file's keys and checks; this file: the task they make.

```yaml
format: image_folder        # image_folder | csv | npz
path: images/               # relative to this file; or train: / val: / test: paths, one per split
num_classes: 10             # optional: inferred from the labels (folders) when absent, checked when given
val_fraction: 0.1           # splits missing on disk are held out of train with a fixed seed
test_fraction: 0.1
# image_folder: one subfolder per class (or train/ val/ test/ folders of class subfolders)
image_size: 32              # images are resized to image_size x image_size
channels: 3                 # 1 (grayscale) or 3 (RGB)
patch_size: 4               # tokens are patch_size x patch_size x channels values
mean: [0.5, 0.5, 0.5]       # optional normalisation after scaling pixels to [0, 1]
std: [0.5, 0.5, 0.5]
# csv: a header row; one column of token sequences, one of integer labels
sequence_column: seq
label_column: label
tokenize: chars             # chars (one token per character) | whitespace
max_len: 512                # longer sequences are truncated
# npz: x_train, y_train (and optionally x_val, y_val, x_test, y_test, len_train, ...)
#   float x (N, T, D): T tokens of width D; float x (N, L): L values cut into patch_size tokens;
#   integer x (N, T): token ids, 0 is padding (lengths from len_<split> or the last non-zero id)
```

A run keeps what reading new inputs as its own needs (`CustomTask.encoding()`: the task file's settings, the
sizes the model was built with, the vocabulary or the class names) in RUN_DIR/task.json; with it,
`CustomTask.as_run(...)` reads another task file, or inputs without labels, exactly as training read its
data (fpt/inference/__init__.py: `fpt evaluate`, `fpt predict`, `fpt.load_run`).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from fpt.core.config import load_yaml
from fpt.core.errors import FPTError
from fpt.datasets import check_labels, parse_int_labels
from fpt.datasets.readers import where
from fpt.tasks.base import Batch, PaddedTokenData, Task, TaskData, TaskSpec
from fpt.tasks.custom.csv import CsvFormat
from fpt.tasks.custom.image_folder import ImageFolderFormat
from fpt.tasks.custom.npz import NpzFormat
from fpt.tasks.custom.taskfile import (FORMATS, KEYS, SPLIT_NAMES, as_trained, check_values, class_names,  # noqa: F401
                                       hold_out, is_task_file, setting)


class CustomTask(ImageFolderFormat, CsvFormat, NpzFormat, Task):
    """A task defined by a YAML file (see the module docstring)."""

    options = {"file": None}

    def __init__(self, **options):
        super().__init__(**options)
        self._read(encoding=None, hold_out=True)

    @classmethod
    def as_run(cls, encoding: dict, file: str | Path | None = None, *, hold_out: bool = True) -> "CustomTask":
        """Task file `file` read as the inputs of the run whose `encoding()` this is: its preprocessing,
        vocabulary or classes and sizes, none derived from the file; without a file, a task that holds no data
        and reads inputs (`read_inputs`). `hold_out=False` keeps the splits as the files give them."""
        task = cls.__new__(cls)
        Task.__init__(task, file=None if file is None else str(file))
        task._read(encoding=encoding, hold_out=hold_out)
        return task

    def _read(self, *, encoding: dict | None, hold_out: bool) -> None:
        self.trained, self.notes = encoding, []
        if encoding is not None:
            self.spec = TaskSpec(**encoding["spec"])
            self.vocab = {t: i + 2 for i, t in enumerate(encoding.get("vocab", ()))}
            self.classes = list(encoding.get("classes", ()))
            if self.opts["file"] is None:
                self.d, self.base, self.name, self.files, self._splits = (dict(encoding["task_file"]), Path("."),
                                                                           self.spec.name, {}, {})
                return
        path = Path(self.opts["file"] or "")
        d = load_yaml(path, "task file")
        if d.get("format") not in FORMATS:
            raise FPTError(f"task file {str(path)!r} needs format: one of {', '.join(FORMATS.names())}")
        unknown = sorted(set(d) - KEYS)
        if unknown:
            raise FPTError(f"task file {str(path)!r} has unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(KEYS))}")
        check_values(d, path)
        if encoding is not None:
            d = as_trained(d, encoding, path)
        self.d, self.base = d, path.parent
        self.name = str(d.get("name") or path.stem)
        files = {s: self._path(d[s]) for s in SPLIT_NAMES if d.get(s)}
        if "train" not in files:
            if not d.get("path"):
                raise FPTError(f"task file {str(path)!r} needs path: (or train:)")
            files = {"train": self._path(d["path"])}
        for f in files.values():
            if not f.exists():
                raise FPTError(f"data for task file {str(path)!r} not found: {str(f)!r}")
        self.files = files
        self._splits = self.format.read_splits(self)  # split -> arrays
        if hold_out:
            self._hold_out_missing()

    def encoding(self) -> dict:
        """What reading inputs as this task's needs beyond the inputs (JSON; a run keeps it in RUN_DIR/task.json):
        the task file's keys, the sizes the model is built from, and what comes from the training data: the
        vocabulary (csv, tokens in id order from 2) or the class names (image folders, in label order)."""
        e = {"task_file": json.loads(json.dumps(self.d, default=str)), "spec": dataclasses.asdict(self.spec)}
        if self.opts.get("file"):  # where it was, absolute: found again after the run folder or the shell moved
            e["path"] = str(Path(self.opts["file"]).resolve())
        elif self.trained is not None and self.trained.get("path"):
            e["path"] = self.trained["path"]
        if self.format is CsvFormat:
            e.update(self.format_encoding())
        if self.classes:  # image folders; CSV and npz labels given by name
            e["classes"] = list(self.classes)
        return e

    def _path(self, p) -> Path:
        p = Path(str(p)).expanduser()
        return p if p.is_absolute() else self.base / p

    def _setting(self, key: str):
        return setting(self.d, key)

    def _hold_out_missing(self) -> None:
        need_val, need_test = "val" not in self._splits, "test" not in self._splits
        if not (need_val or need_test):
            return
        train = self._splits["train"]
        n = len(train["y"])
        tr, va, te = hold_out(n, float(self.d.get("val_fraction", 0.1)), float(self.d.get("test_fraction", 0.1)),
                               need_val, need_test)
        take = lambda idx: {k: v[idx] for k, v in train.items()}  # noqa: E731
        self._splits["train"] = take(tr)
        if need_val:
            self._splits["val"] = take(va)
        if need_test:
            self._splits["test"] = take(te)

    def _classes(self, labels: dict[str, np.ndarray], what, row=lambda i: f"row {i}") -> int:
        """The number of classes (a trained run's; num_classes; or the largest label + 1), every split's labels
        checked against it; `what(split)` names a split's file in messages, `row(i)` its rows."""
        k = self.spec.num_classes if self.trained is not None else self.d.get("num_classes")
        k = int(k) if k is not None else int(max(int(y.max()) for y in labels.values() if len(y)) + 1)
        for split, y in labels.items():
            check_labels(y, k, what=what(split), row=row)
        return max(k, 2)









    def _label_ids(self, labels, path: Path, split: str | None, num_classes: int | None, *,
                   first_line: int | None = 2) -> np.ndarray | None:
        """Labels as class indices: by name where the task has class names (this run's, or the training
        file's when its labels are words), else integers 0..C-1. One line naming the first unknown name."""
        if labels is None:
            return None
        labels = [str(v).strip() for v in labels]
        if not self.classes:
            return parse_int_labels(labels, num_classes, path=path, split=split, first_line=first_line)
        index = {c: i for i, c in enumerate(self.classes)}
        unknown = next((i for i, v in enumerate(labels) if v not in index), None)
        if unknown is not None:
            at = f"line {first_line + unknown}" if first_line is not None else f"row {unknown}"
            raise FPTError(f"{where(path, split)} {at}: label {labels[unknown]!r} is not one of the classes "
                           f"{', '.join(self.classes[:10])}{', ...' if len(self.classes) > 10 else ''}")
        return np.fromiter((index[v] for v in labels), dtype=np.int64, count=len(labels))







    @property
    def format(self):
        """This task file's format (FORMATS: fpt/tasks/custom/csv.py, npz.py, image_folder.py)."""
        return FORMATS.get(self.d["format"])

    def read_inputs(self, path: str | Path) -> tuple[TaskData, list[int | str]]:
        """Inputs in this task's format, read as its training data was: a CSV (the label column optional), a
        folder of images (directly in it or in class subfolders) or one image, an .npz (x; optional lengths, y).
        Returns (data whose one split, "input", holds them, label -1 where unknown; the name of each example:
        its id column, its row counted from 0, or its image file)."""
        path, fmt = Path(path), self.format
        if not path.exists():
            raise FPTError(f"input {str(path)!r} does not exist")
        if not fmt.fits(path):  # a file of another format: by its name
            raise FPTError(f"input {str(path)!r} is not {fmt.kind}: the run trained on format {fmt.name}")
        arrays, names = fmt.read_input_arrays(self, path)
        data = self._data({"input": arrays})
        data.notes += self.notes
        return data, names

    def read_values(self, values) -> tuple[TaskData, list[int]]:
        """In-memory inputs read as this task's, like `read_inputs` reads a file: a list of strings (csv: one
        sequence each), or an array / tensor (npz: x as an npz's x; image_folder: uint8 images (N, C, H, W)
        at the run's image size). Returns (data with one split, "input", labels -1; row numbers)."""
        arrays = self.format.read_value_arrays(self, values)
        data = self._data({"input": arrays})
        data.notes += self.notes
        return data, list(range(len(arrays["y"])))

    def _data(self, s: dict) -> TaskData:
        """Split name -> arrays ({"x", "y", "len"}) as a TaskData."""
        if self.format is ImageFolderFormat:
            return self.image_data(s)
        if self.spec.input_kind == "tokens":
            data = PaddedTokenData(self.spec, {n: Batch(torch.from_numpy(v["x"]), torch.from_numpy(v["y"])[:, None],
                                                        torch.from_numpy(v["len"])) for n, v in s.items()})
        else:
            data = TaskData(self.spec, {n: Batch(torch.from_numpy(v["x"]).float(), torch.from_numpy(v["y"])[:, None])
                                        for n, v in s.items()})
        # file by file as read, naming the file's own rows (before any hold-out); read as a trained run's,
        # ids and widths are checked against the run's sizes by `validate`
        data.validated = self.trained is None
        return data

    def load(self, *, seed: int, data_dir: str | None = None) -> TaskData:
        data = self._data(self._splits)
        data.sources = {n: where(self.files.get(n, self.files["train"]), n) for n in data.splits}
        data.notes += self.notes
        data.encoding = self.encoding()
        return data
