"""A task file (YAML) as fpt reads it: its keys, what each value must be, the preprocessing a run keeps, and the
registry of own-data formats (`FORMATS`: one file each in this package, one registry line)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fpt.core.errors import FPTError
from fpt.core.registry import Registry

#: format name -> its class (fpt/tasks/custom/csv.py, npz.py, image_folder.py): how that format's data, new
#: inputs and in-memory values are read. A new format is one file and one `FORMATS.register` line.
FORMATS: Registry[type] = Registry("format")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
SPLIT_NAMES = ("train", "val", "test")
KEYS = {"format", "path", "train", "val", "test", "num_classes", "val_fraction", "test_fraction", "image_size",
        "channels", "patch_size", "mean", "std", "sequence_column", "label_column", "tokenize", "max_len", "name"}
# the keys that decide how an example becomes model input, with their defaults (patch_size's: per format);
# another task file read as a trained run's inputs keeps the run's (`_as_trained`)
PREPROCESSING = {"image_size": 32, "channels": 3, "patch_size": None, "mean": None, "std": None,
                 "tokenize": "chars", "max_len": 512}




def setting(d: dict, key: str):
    """Preprocessing key `key` of task file `d`, or its default."""
    fmt = d.get("format")
    default = (FORMATS.get(fmt).default_patch_size if fmt in FORMATS else None) if key == "patch_size" \
        else PREPROCESSING[key]
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


def hold_out(n: int, val_fraction: float, test_fraction: float, need_val: bool, need_test: bool):
    """Index arrays (train, val, test) over n examples; a fixed seed, the same for every run."""
    order = np.random.default_rng(0).permutation(n)
    n_test = int(round(n * test_fraction)) if need_test else 0
    n_val = int(round(n * val_fraction)) if need_val else 0
    if n - n_val - n_test < 1 or (need_val and n_val < 1) or (need_test and n_test < 1):
        raise FPTError(f"cannot hold out val/test fractions {val_fraction}/{test_fraction} from {n} examples")
    return order[n_test + n_val:], order[n_test:n_test + n_val], order[:n_test]


def as_trained(d: dict, encoding: dict, path: Path) -> dict:
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
