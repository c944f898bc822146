"""Format `npz`: arrays x_train, y_train (and optionally x_val, y_val, x_test, y_test, len_<split>): float x
(N, T, D) tokens of width D, float x (N, L) cut into patch_size tokens, or integer x (N, T) token ids (0 is
padding). Labels integers, or strings (class names, in sorted order). Read with allow_pickle=False."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fpt.datasets import check_labels
from fpt.datasets.readers import first_row, where
from fpt.core.errors import FPTError
from fpt.tasks.base import TaskSpec, patchify_sequence
from fpt.tasks.custom.taskfile import FORMATS, IMAGE_SUFFIXES, SPLIT_NAMES


class NpzFormat:
    """Mixed into CustomTask: `self` is the task."""

    name, kind, default_patch_size = "npz", "an .npz file", 1

    @staticmethod
    def fits(path: Path) -> bool:
        return path.is_file() and path.suffix.lower() not in {".csv", ".tsv"} | IMAGE_SUFFIXES

    def read_splits(self) -> dict:
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

    def read_input_arrays(self, path: Path) -> tuple[dict, list]:
        arrays = self._read_npz_inputs(path)
        return arrays, list(range(len(arrays["y"])))

    def read_value_arrays(self, values) -> dict:
        x = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
        if x.ndim < 2 or not len(x):
            raise FPTError("inputs for an npz task: an array or tensor with one row per example")
        arrays, at = {"x": x, "y": np.full(len(x), -1)}, Path("<inputs>")
        _check_npz_split(at, None, arrays, train=arrays, names=("x", "lengths"))
        self._npz_inputs(arrays, at, "", x_name="x")
        return arrays


FORMATS.register("npz", NpzFormat)


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
