"""Your own data as a task, defined by a YAML file: `fpt train --task my-data.yaml`.

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
data (fpt/inference.py: `fpt evaluate`, `fpt predict`, `fpt.load_run`).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
import yaml

from fpt.datasets import check_labels, parse_int_labels, read_table
from fpt.datasets.readers import first_row, where
from fpt.errors import FPTError
from fpt.tasks.base import Batch, PaddedTokenData, Task, TaskData, TaskSpec, pad_flat, patchify_images, patchify_sequence
from fpt.tasks.image_data import ImageData, prepare_images

FORMATS = ("image_folder", "csv", "npz")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
SPLIT_NAMES = ("train", "val", "test")
KEYS = {"format", "path", "train", "val", "test", "num_classes", "val_fraction", "test_fraction", "image_size",
        "channels", "patch_size", "mean", "std", "sequence_column", "label_column", "tokenize", "max_len", "name"}
# the keys that decide how an example becomes model input, with their defaults (patch_size's: per format);
# another task file read as a trained run's inputs keeps the run's (`_as_trained`)
PREPROCESSING = {"image_size": 32, "channels": 3, "patch_size": None, "mean": None, "std": None,
                 "tokenize": "chars", "max_len": 512}
PATCH_SIZE = {"image_folder": 4, "npz": 1}


def setting(d: dict, key: str):
    """Preprocessing key `key` of task file `d`, or its default."""
    default = PATCH_SIZE.get(d.get("format")) if key == "patch_size" else PREPROCESSING[key]
    return d.get(key, default)


def _int_in(lo: int, hi: int):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _number_in(lo: float, hi: float):
    return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and lo <= v < hi


def _numbers(v) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)


#: each key's check and what a value must be (one line naming key, value and file when it is not)
VALUE_CHECKS = {
    "num_classes": (_int_in(2, 1_000_000), "an integer from 2"),
    "val_fraction": (_number_in(0, 1), "a number from 0 to below 1"),
    "test_fraction": (_number_in(0, 1), "a number from 0 to below 1"),
    "image_size": (_int_in(1, 4096), "an integer from 1 to 4096 (pixels a side)"),
    "channels": (lambda v: v in (1, 3) and not isinstance(v, bool), "1 or 3"),
    "patch_size": (_int_in(1, 4096), "a positive integer"),
    "max_len": (_int_in(1, 1_000_000), "a positive integer"),
    "mean": (_numbers, "a list of numbers, one per channel"),
    "std": (lambda v: _numbers(v) and all(x > 0 for x in v), "a list of positive numbers, one per channel"),
    "tokenize": (lambda v: v in ("chars", "whitespace"), "chars or whitespace"),
    "sequence_column": (lambda v: isinstance(v, str) and v != "", "a column name"),
    "label_column": (lambda v: isinstance(v, str) and v != "", "a column name"),
    "name": (lambda v: isinstance(v, (str, int)), "a name"),
    **{k: (lambda v: isinstance(v, str) and v != "", "a path") for k in ("path", "train", "val", "test")},
}


def check_values(d: dict, path: Path) -> None:
    """Every key's value of the type it must have, before anything reads or allocates by it: `num_classes:
    two` or `image_size: big` is one line, not a traceback (or a 153 GB allocation) later."""
    for key, (ok, what) in VALUE_CHECKS.items():
        if key in d and d[key] is not None and not ok(d[key]):
            raise FPTError(f"task file {str(path)!r}: {key} must be {what}, got {d[key]!r}")
    if not d.get("path") and not d.get("train"):
        raise FPTError(f"task file {str(path)!r} needs path: (or train:)")


def class_names(labels: list[str] | None) -> list[str]:
    """The sorted distinct labels when any is not an integer (labels given by name), else [] (integers)."""
    if not labels:
        return []
    values = [str(v).strip() for v in labels]
    try:
        np.asarray(values, dtype=np.float64)
        return []
    except ValueError:
        return sorted(set(values))


def is_task_file(name: str) -> bool:
    return name.endswith((".yaml", ".yml"))


def _hold_out(n: int, val_fraction: float, test_fraction: float, need_val: bool, need_test: bool):
    """Index arrays (train, val, test) over n examples; a fixed seed, the same for every run."""
    order = np.random.default_rng(0).permutation(n)
    n_test = int(round(n * test_fraction)) if need_test else 0
    n_val = int(round(n * val_fraction)) if need_val else 0
    if n - n_val - n_test < 1 or (need_val and n_val < 1) or (need_test and n_test < 1):
        raise FPTError(f"cannot hold out val/test fractions {val_fraction}/{test_fraction} from {n} examples")
    return order[n_test + n_val:], order[n_test:n_test + n_val], order[:n_test]


class CustomTask(Task):
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
        if not path.is_file():
            raise FPTError(f"task file {str(path)!r} does not exist")
        try:
            d = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise FPTError(f"task file {str(path)!r} is not valid YAML: {str(e).splitlines()[0]}") from e
        if not isinstance(d, dict) or d.get("format") not in FORMATS:
            raise FPTError(f"task file {str(path)!r} needs format: one of {', '.join(FORMATS)}")
        unknown = sorted(set(d) - KEYS)
        if unknown:
            raise FPTError(f"task file {str(path)!r} has unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(KEYS))}")
        check_values(d, path)
        if encoding is not None:
            d = _as_trained(d, encoding, path)
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
        self._splits = getattr(self, f"_read_{d['format']}")()  # split -> arrays
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
        if self.d["format"] == "csv":
            e["vocab"] = sorted(self.vocab, key=self.vocab.get)
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
        tr, va, te = _hold_out(n, float(self.d.get("val_fraction", 0.1)), float(self.d.get("test_fraction", 0.1)),
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

    # ---- image folder ------------------------------------------------------------------------

    def _read_image_folder(self) -> dict:
        size, channels = self._image_settings()
        if self.trained is None:
            self.classes = sorted(p.name for p in self.files["train"].iterdir() if p.is_dir())
            if len(self.classes) < 2:
                raise FPTError(f"image folder {str(self.files['train'])!r} needs one subfolder per class "
                               f"(found {len(self.classes)})")
        splits = {}
        for split, folder in self.files.items():
            x, y, _ = self._read_images(folder, split)
            splits[split] = {"x": x, "y": y}
        if self.trained is None:
            p = int(self._setting("patch_size"))
            patchify_images(torch.zeros(1, channels, size, size), p, what=f"the {size}x{size} images of {self.name}")
            k = self._classes({n: s["y"] for n, s in splits.items()}, what=lambda n: where(self.files[n], n))
            self.spec = TaskSpec(name=self.name, input_kind="continuous", token_dim=channels * p * p,
                                 seq_len=(size // p) ** 2, num_classes=k)
        return splits

    def _image_settings(self) -> tuple[int, int]:
        """(image_size, channels), with mean and std checked against the channels."""
        size, channels = int(self._setting("image_size")), int(self._setting("channels"))
        if channels not in (1, 3):
            raise FPTError(f"channels must be 1 or 3, got {channels}")
        for key, low in (("mean", -np.inf), ("std", 0.0)):  # normalisation must keep pixels finite
            v = self.d.get(key)
            if v is not None and not (isinstance(v, list) and len(v) == channels
                                      and all(isinstance(a, (int, float)) and low < a < np.inf for a in v)):
                raise FPTError(f"{key} must be a list of {channels} finite numbers"
                               f"{' above 0' if key == 'std' else ''}, got {v!r}")
        return size, channels

    def _read_images(self, folder: Path, split: str | None, *, unlabelled: bool = False):
        """(uint8 images (N, C, H, W), labels (N,), names relative to `folder`) of the images in `folder`'s
        class subfolders, the label a class's index; with `unlabelled` also those directly in `folder` (or
        `folder` itself, an image file), labelled -1. Read as a trained run's, a subfolder must be a class."""
        from PIL import Image

        size, channels = self._image_settings()
        if folder.is_file():
            files = [(folder, -1)] if unlabelled else []
        else:
            if self.trained is not None or unlabelled:
                unknown = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in self.classes)
                if unknown:
                    raise FPTError(f"{where(folder, split)}: subfolder(s) {', '.join(unknown)} are not among the "
                                   f"classes {', '.join(self.classes)}")
            files = [(f, -1) for f in sorted(folder.iterdir()) if f.is_file()] if unlabelled else []
            for label, cls in enumerate(self.classes):
                files += [(f, label) for f in sorted((folder / cls).glob("*"))] if (folder / cls).is_dir() else []
        xs, ys, names = [], [], []
        for f, label in files:
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                img = Image.open(f).convert("L" if channels == 1 else "RGB").resize((size, size), Image.BILINEAR)
            except (OSError, Image.DecompressionBombError) as e:  # a bomb: more pixels than PIL's limit
                raise FPTError(f"cannot read image {str(f)!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                               ) from None
            a = np.asarray(img, dtype=np.uint8)
            xs.append(a[None] if channels == 1 else a.transpose(2, 0, 1))  # (C, H, W)
            ys.append(label)
            names.append(f.name if f == folder else str(f.relative_to(folder)))
        if not xs:
            raise FPTError(f"no images under {str(folder)!r} (class subfolders {', '.join(self.classes)})")
        return np.stack(xs), np.array(ys, dtype=np.int64), names

    def _prepare_images(self, x: torch.Tensor) -> torch.Tensor:
        if "mean" in self.d or "std" in self.d:
            c = x.shape[1]
            mean = torch.tensor(self.d.get("mean", [0.0] * c), dtype=x.dtype).reshape(-1, 1, 1)
            std = torch.tensor(self.d.get("std", [1.0] * c), dtype=x.dtype).reshape(-1, 1, 1)
            x = (x - mean) / std
        return patchify_images(x, int(self._setting("patch_size")), what=self.name)

    # ---- CSV of token sequences --------------------------------------------------------------

    def _read_csv(self) -> dict:
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

    # ---- npz ---------------------------------------------------------------------------------

    def _read_npz(self) -> dict:
        path = self.files["train"]
        arrays = _load_npz(path)
        if "x_train" not in arrays or "y_train" not in arrays:
            raise FPTError(f"{str(path)!r} needs arrays x_train and y_train; it has {', '.join(arrays)}")
        splits = {}
        if self.trained is None:  # y_train of strings: class names, in sorted order
            y = arrays["y_train"]
            self.classes = sorted({str(v) for v in y.reshape(-1)}) if y.dtype.kind in "US" else []
        for s in SPLIT_NAMES:
            if f"x_{s}" in arrays:
                x, y = arrays[f"x_{s}"], arrays.get(f"y_{s}")
                if y is None or len(y) != len(x):
                    raise FPTError(f"{str(path)!r}: x_{s} has {len(x)} rows but y_{s} has "
                                   f"{'none' if y is None else len(y)}")
                splits[s] = {"x": x, "y": self._npz_label_ids(y, path, s)}
                if f"len_{s}" in arrays:
                    splits[s]["len"] = arrays[f"len_{s}"]
                _check_npz_split(path, s, splits[s], train=splits["train"])
        k = self._classes({n: s["y"] for n, s in splits.items()}, what=lambda n: f"{where(path, n)}: y_{n}")
        for name, s in splits.items():
            self._npz_inputs(s, path, name)
        if self.trained is None:
            x = splits["train"]["x"]
            if np.issubdtype(x.dtype, np.integer):
                vocab = int(max(int(s["x"].max()) for s in splits.values())) + 1
                self.spec = TaskSpec(name=self.name, input_kind="tokens", vocab_size=max(vocab, 2),
                                     seq_len=x.shape[1], num_classes=k, padded=True)
            else:
                self.spec = TaskSpec(name=self.name, input_kind="continuous", token_dim=x.shape[2],
                                     seq_len=x.shape[1], num_classes=k)
        return splits

    def _npz_label_ids(self, y: np.ndarray, path: Path, split: str | None, *, name: str | None = None) -> np.ndarray:
        """An npz's labels as class indices: strings by this task's class names, numbers as integers."""
        if y.dtype.kind in "US":
            if not self.classes:
                raise FPTError(f"{where(path, split)}: {name or f'y_{split}'} holds strings, but the task's "
                               f"labels are integers")
            return self._label_ids(list(y.reshape(-1).astype(str)), path, split, None, first_line=None)
        return _npz_labels(y, path, split, name=name)

    def _npz_inputs(self, arrays: dict, path: Path, split: str, x_name: str | None = None) -> None:
        """One split's x as the model takes it, in place: token ids (N, T) get their lengths (given, or the
        position after the last non-zero id); values (N, L) are cut into patch_size tokens (N, T, D)."""
        x = arrays["x"]
        if np.issubdtype(x.dtype, np.integer):
            if x.ndim != 2:
                raise FPTError(f"{str(path)!r}: integer {x_name or f'x_{split}'} must be (N, T) token ids, "
                               f"got {x.shape}")
            if "len" not in arrays:  # the position after the last non-zero id
                nz = x != 0
                arrays["len"] = np.where(nz.any(1), x.shape[1] - np.argmax(nz[:, ::-1], axis=1), 1)
        elif x.ndim == 2:
            arrays["x"] = patchify_sequence(torch.from_numpy(x.astype(np.float32)), int(self._setting("patch_size")),
                                            what=self.name).numpy()

    # ---- new inputs (`fpt predict`) ----------------------------------------------------------

    def read_inputs(self, path: str | Path) -> tuple[TaskData, list[int | str]]:
        """Inputs in this task's format, read as its training data was: a CSV (the label column optional), a
        folder of images (directly in it or in class subfolders) or one image, an .npz (x; optional lengths, y).
        Returns (data whose one split, "input", holds them, label -1 where unknown; the name of each example:
        its row, counted from 0, or its image file)."""
        path, fmt = Path(path), self.d["format"]
        if not path.exists():
            raise FPTError(f"input {str(path)!r} does not exist")
        suffix = path.suffix.lower()
        fits = {"image_folder": path.is_dir() or suffix in IMAGE_SUFFIXES,  # files of another format: by name
                "csv": path.is_file() and suffix != ".npz" and suffix not in IMAGE_SUFFIXES,
                "npz": path.is_file() and suffix not in {".csv", ".tsv"} | IMAGE_SUFFIXES}[fmt]
        if not fits:
            kind = {"csv": "a CSV file", "npz": "an .npz file", "image_folder": "a folder of images or an image"}[fmt]
            raise FPTError(f"input {str(path)!r} is not {kind}: the run trained on format {fmt}")
        if fmt == "image_folder":
            x, y, names = self._read_images(path, None, unlabelled=True)
            arrays = {"x": x, "y": y}
        elif fmt == "csv":
            toks, labels, ids = self._tokenize(path, None, labels_optional=True, ids=True)
            y = self._label_ids(labels, path, None, self.spec.num_classes)
            arrays = {**self._encode(toks, path, None), "y": np.full(len(toks), -1) if y is None else y}
            names = ids if ids is not None else list(range(len(toks)))  # the input's own id column, if any
        else:
            arrays = self._read_npz_inputs(path)
            names = list(range(len(arrays["y"])))
        data = self._data({"input": arrays})
        data.notes += self.notes
        return data, names

    def read_values(self, values) -> tuple[TaskData, list[int]]:
        """In-memory inputs read as this task's, like `read_inputs` reads a file: a list of strings (csv: one
        sequence each), or an array / tensor (npz: x as an npz's x; image_folder: uint8 images (N, C, H, W)
        at the run's image size). Returns (data with one split, "input", labels -1; row numbers)."""
        fmt, where_ = self.d["format"], Path("<inputs>")
        if isinstance(values, (list, tuple)) and values and all(isinstance(v, str) for v in values):
            if fmt != "csv":
                raise FPTError(f"strings are inputs of a csv task; this run's task is format {fmt}")
            mode, max_len = self._setting("tokenize"), int(self._setting("max_len"))
            toks = [(list(v) if mode == "chars" else v.split())[:max_len] for v in values]
            arrays = {**self._encode(toks, where_, None), "y": np.full(len(toks), -1)}
        else:
            x = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
            if fmt == "csv" or x.ndim < 2 or not len(x):
                raise FPTError(f"inputs for a {fmt} task: " + ("a list of strings" if fmt == "csv" else
                               "an array or tensor with one row per example"))
            arrays = {"x": x, "y": np.full(len(x), -1)}
            if fmt == "image_folder":
                size, channels = self._image_settings()
                if x.dtype != np.uint8 or x.shape[1:] != (channels, size, size):
                    raise FPTError(f"images must be uint8 (N, {channels}, {size}, {size}), got {x.dtype} {x.shape}")
            else:
                _check_npz_split(where_, None, arrays, train=arrays, names=("x", "lengths"))
                self._npz_inputs(arrays, where_, "", x_name="x")
        data = self._data({"input": arrays})
        data.notes += self.notes
        return data, list(range(len(arrays["y"])))

    def _read_npz_inputs(self, path: Path) -> dict:
        z = _load_npz(path)
        if "x" not in z:
            raise FPTError(f"{str(path)!r} needs an array x (optionally lengths and y); it has "
                           f"{', '.join(z) or 'none'}")
        arrays = {"x": z["x"], **({"len": z["lengths"]} if "lengths" in z else {})}
        _check_npz_split(path, None, arrays, train=arrays, names=("x", "lengths"))
        arrays["y"] = np.full(len(arrays["x"]), -1)
        if "y" in z:
            if len(z["y"]) != len(arrays["x"]):
                raise FPTError(f"{str(path)!r}: x has {len(arrays['x'])} rows but y has {len(z['y'])}")
            arrays["y"] = self._npz_label_ids(z["y"], path, None, name="y")
            check_labels(arrays["y"], self.spec.num_classes, what=f"{str(path)!r}: y")
        self._npz_inputs(arrays, path, "", x_name="x")
        return arrays

    # ---- data --------------------------------------------------------------------------------

    def _data(self, s: dict) -> TaskData:
        """Split name -> arrays ({"x", "y", "len"}) as a TaskData."""
        if self.d["format"] == "image_folder":  # checked after normalisation, by TaskData.validate
            images = {n: (torch.from_numpy(v["x"]), torch.from_numpy(v["y"])) for n, v in s.items()}
            if "train" in images:
                return ImageData(self.spec, images, self._prepare_images, augment_train=False)
            return TaskData(self.spec, {n: Batch(prepare_images(self._prepare_images, x), y[:, None])
                                        for n, (x, y) in images.items()})
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


def _as_trained(d: dict, encoding: dict, path: Path) -> dict:
    """Task file `d` read as a trained run's inputs: the run's format and preprocessing, the file's own data
    layout (paths, columns, fractions). One line where the file asks for anything else than the run had."""
    run = encoding["task_file"]
    if d["format"] != run["format"]:
        raise FPTError(f"task file {str(path)!r} has format {d['format']}; the run trained on format "
                       f"{run['format']}")
    for key in PREPROCESSING:
        if key in d and d[key] != setting(run, key):
            raise FPTError(f"task file {str(path)!r} sets {key}: {d[key]!r}, the run trained with "
                           f"{setting(run, key)!r} (drop it: the run reads inputs as it was trained)")
    k = encoding["spec"]["num_classes"]
    if d.get("num_classes") is not None and int(d["num_classes"]) != k:
        raise FPTError(f"task file {str(path)!r} sets num_classes: {d['num_classes']}; the run has {k} classes")
    layout = {key: v for key, v in d.items() if key not in PREPROCESSING}
    return {**layout, **{key: run[key] for key in PREPROCESSING if key in run}}


def _load_npz(path: Path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:
        raise FPTError(f"cannot read {str(path)!r} as .npz: {type(e).__name__}") from e


def _npz_labels(y: np.ndarray, path: Path, split: str | None, *, name: str | None = None) -> np.ndarray:
    """y_<split> (or the array `name`) as (N,) int64: one label per row; floats only where they hold whole numbers."""
    name = name or f"y_{split}"
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise FPTError(f"{where(path, split)}: {name} must hold one label per row, shape ({len(y)},), "
                       f"got {y.shape}")
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            i = first_row(bad)
            raise FPTError(f"{where(path, split)}: {name} row {i}: label {y[i]} is not an integer")
    elif y.dtype.kind not in "iub":
        raise FPTError(f"{where(path, split)}: {name} has dtype {y.dtype}; labels are integers 0..C-1")
    return y.astype(np.int64)


def _check_npz_split(path: Path, split: str | None, arrays: dict, *, train: dict,
                     names: tuple[str, str] | None = None) -> None:
    """One vectorised pass over x_<split> (and len_<split>; or the arrays `names`): rows, the width of
    x_train, finite values or non-negative token ids, lengths in 1..T. One line naming the file, the split
    and the first bad row."""
    x, at = arrays["x"], where(path, split)
    x_name, len_name = names or (f"x_{split}", f"len_{split}")
    if len(x) == 0:
        raise FPTError(f"{at}: {x_name} has no rows: every split needs at least one example")
    if x.dtype.kind not in "iuf":
        raise FPTError(f"{at}: {x_name} has dtype {x.dtype}; use floats (values) or integers (token ids)")
    if x.ndim not in (2, 3):
        raise FPTError(f"{at}: {x_name} must be (N, T) token ids, (N, L) or (N, T, D) values, got {x.shape}")
    ref = train["x"]
    if x.shape[1:] != ref.shape[1:] or (x.dtype.kind == "f") != (ref.dtype.kind == "f"):
        raise FPTError(f"{at}: {x_name} is {x.dtype} {x.shape}, x_train {ref.dtype} {ref.shape}: every split "
                       f"needs the same kind and width of rows")
    if x.dtype.kind == "f":
        if not np.isfinite(x.sum(dtype=np.float64)):  # NaN or inf anywhere make the sum non-finite
            bad = ~np.isfinite(x)
            if bad.any():
                i = first_row(bad)
                raise FPTError(f"{at}: {x_name} row {i} holds {x[i][~np.isfinite(x[i])].flat[0]}: "
                               f"features must be finite")
    elif x.min() < 0:
        i = first_row(x < 0)
        raise FPTError(f"{at}: {x_name} row {i}: token id {x[i].min()} is negative (ids are 0..V-1, 0 is padding)")
    if "len" in arrays:
        n = arrays["len"]
        if n.shape != (len(x),) or n.dtype.kind not in "iu":
            raise FPTError(f"{at}: {len_name} must be ({len(x)},) integers, got {n.dtype} {n.shape}")
        if x.dtype.kind == "f":
            raise FPTError(f"{at}: {len_name} is for token ids; float {x_name} rows are all of one length")
        bad = (n < 1) | (n > x.shape[1])
        if bad.any():
            i = first_row(bad)
            raise FPTError(f"{at}: {len_name} row {i}: length {n[i]} outside 1..{x.shape[1]}")
        arrays["len"] = n.astype(np.int64)
