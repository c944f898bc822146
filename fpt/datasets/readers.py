"""Readers for the standard on-disk formats. Each checks sizes, counts and label ranges and fails
with one line (`FPTError`) rather than return silently wrong data."""
from __future__ import annotations

import csv
import gzip
import pickle
from pathlib import Path

import numpy as np

from fpt.errors import FPTError

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format), gzipped or raw: magic 0 0 dtype ndim, big-endian dims, data."""
    try:
        raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as e:  # gzip raises EOFError on a truncated archive
        raise FPTError(f"cannot read IDX file {str(path)!r}: {type(e).__name__}: {e} (truncated or corrupt)") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise FPTError(f"{str(path)!r} is not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise FPTError(f"IDX file {str(path)!r} is truncated: header needs {header} bytes, file has {len(raw)}")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    need = header + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != need:
        state = "truncated" if len(raw) < need else "too long"
        raise FPTError(f"IDX file {str(path)!r} is {state}: dims {dims} need {need} bytes, file has {len(raw)}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def read_cifar_batches(folder: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 python pickles -> (N, 3, 32, 32) uint8 images, (N,) int64 labels."""
    xs, ys = [], []
    for name in names:
        path = folder / name
        try:
            with open(path, "rb") as f:
                d = pickle.load(f, encoding="bytes")
            data = np.asarray(d[b"data"], dtype=np.uint8)
            labels = np.asarray(d[b"labels"], dtype=np.int64)
        except FileNotFoundError as e:
            raise FPTError(f"CIFAR-10 batch {name} missing from {str(folder)!r}") from e
        except Exception as e:  # truncated pickle, wrong keys
            raise FPTError(f"CIFAR-10 batch {str(path)!r} is corrupt or truncated ({type(e).__name__})") from e
        if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
            raise FPTError(f"CIFAR-10 batch {str(path)!r} has data {data.shape} and {len(labels)} labels; "
                           "expected (N, 3072) and N labels")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels)
    x, y = np.concatenate(xs), np.concatenate(ys)
    check_labels(y, 10, what=str(folder))
    return x, y


def check_labels(y: np.ndarray, num_classes: int, *, what: str) -> None:
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        bad = int(y[(y < 0) | (y >= num_classes)][0])
        raise FPTError(f"{what}: label {bad} out of range 0..{num_classes - 1}")


def read_table(path: Path, columns: tuple[str, str], *, delimiter: str = ",") -> tuple[list[str], list[str]]:
    """Two named columns of a CSV/TSV with a header row, as strings (rows with other columns ignored)."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise FPTError(f"{str(path)!r} has no column(s) {', '.join(missing)}; "
                               f"its header is {reader.fieldnames}")
            a, b = [], []
            for i, row in enumerate(reader, start=2):
                if row[columns[0]] is None or row[columns[1]] is None:
                    raise FPTError(f"{str(path)!r} line {i}: missing a value")
                a.append(row[columns[0]])
                b.append(row[columns[1]])
    except FileNotFoundError as e:
        raise FPTError(f"file {str(path)!r} not found") from e
    return a, b


def parse_int_labels(values: list[str], num_classes: int | None, *, path: Path) -> np.ndarray:
    out = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        try:
            out[i] = int(float(v))
        except ValueError as e:
            raise FPTError(f"{str(path)!r} row {i + 1}: label {v!r} is not an integer") from e
        if num_classes is not None and not 0 <= out[i] < num_classes:
            raise FPTError(f"{str(path)!r} row {i + 1}: label {out[i]} out of range 0..{num_classes - 1}")
    return out


def read_lmdb(path: Path) -> list[dict]:
    """TAPE's lmdb files: pickled dicts under str(index), with b'num_examples'. Needs `pip install lmdb`."""
    try:
        import lmdb
    except ImportError as e:
        raise FPTError(f"reading {str(path)!r} needs the optional lmdb package (pip install lmdb), "
                       "or convert it to a CSV of seq,label") from e
    env = lmdb.open(str(path), max_readers=1, readonly=True, lock=False, readahead=False, meminit=False)
    with env.begin(write=False) as txn:
        n = pickle.loads(txn.get(b"num_examples"))
        items = [pickle.loads(txn.get(str(i).encode())) for i in range(n)]
    env.close()
    return items
