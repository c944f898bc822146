"""Readers for the standard on-disk formats. Each checks sizes, counts and label ranges and fails
with one line (`FPTError`) rather than return silently wrong data."""
from __future__ import annotations

import csv
import gzip
import io
import pickle
from pathlib import Path

import numpy as np

from fpt.core.errors import FPTError, UnsafeFile

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


class _DataUnpickler(pickle.Unpickler):
    """Pickles of data only (CIFAR-10's batches, TAPE's lmdb records): dicts, lists, bytes, strings, numbers
    and numpy arrays. Any other global a pickle names (a `__reduce__` payload: os.system, eval, ...) is refused
    before it is looked up, so it never runs."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"), ("copy_reg", "_reconstructor"),
               ("copyreg", "_reconstructor"), ("__builtin__", "object"), ("builtins", "object")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise ExecutableContent(f"{module}.{name}")


class ExecutableContent(pickle.UnpicklingError):
    """A data pickle names a global outside `_DataUnpickler.ALLOWED`."""


def load_data_pickle(f, what: str, **kwargs):
    """pickle.load for files of data (never runs code): one line naming `what` when it holds anything else."""
    try:
        return _DataUnpickler(f, **kwargs).load()
    except ExecutableContent as e:
        raise UnsafeFile(f"{what} holds executable content ({e}), not only data: refused without running it") from None


def read_cifar_batches(folder: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 python pickles -> (N, 3, 32, 32) uint8 images, (N,) int64 labels."""
    xs, ys = [], []
    for name in names:
        path = folder / name
        try:
            with open(path, "rb") as f:
                d = load_data_pickle(f, f"CIFAR-10 batch {str(path)!r}", encoding="bytes")
            data = np.asarray(d[b"data"], dtype=np.uint8)
            labels = np.asarray(d[b"labels"], dtype=np.int64)
        except FileNotFoundError as e:
            raise FPTError(f"CIFAR-10 batch {name} missing from {str(folder)!r}") from e
        except FPTError:
            raise
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


def first_row(bad: np.ndarray) -> int:
    """The first row (index along the first axis) where `bad` holds anywhere."""
    return int(np.argmax(bad.reshape(len(bad), -1).any(1)))


def check_labels(y: np.ndarray, num_classes: int, *, what: str, row=lambda i: f"row {i}") -> None:
    """Labels in 0..num_classes-1; else one line naming the first bad row (`row(i)` says how)."""
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        i = first_row((y < 0) | (y >= num_classes))
        bad = int(np.asarray(y[i]).reshape(-1)[0]) if np.ndim(y[i]) else int(y[i])
        raise FPTError(f"{what} {row(i)}: label {bad} out of range 0..{num_classes - 1}")


def where(path: Path, split: str | None) -> str:
    """How a message names a split's file: 'data/train.csv' (split train)."""
    return f"{str(path)!r}" + (f" (split {split})" if split else "")


def read_table(path: Path, columns: tuple[str, ...], *, delimiter: str = ",", split: str | None = None,
               optional: tuple[str, ...] = ()) -> tuple[list[str] | None, ...]:
    """Named columns of a UTF-8 CSV/TSV with a header row, as strings, one list per column (other columns
    ignored); a column in `optional` that the header lacks gives None. At least one row; one line naming
    the file and the line for anything else."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            if reader.fieldnames is None:
                raise FPTError(f"{where(path, split)} is empty: it needs a header row with "
                               f"{' and '.join(columns)}, then one row per example")
            present = [c for c in columns if c in reader.fieldnames]
            missing = [c for c in columns if c not in present and c not in optional]
            if missing:
                raise FPTError(f"{where(path, split)} has no column(s) {', '.join(missing)}; "
                               f"its header is {reader.fieldnames}")
            values = {c: [] for c in present}
            for row in reader:
                if any(row[c] is None for c in present):
                    raise FPTError(f"{where(path, split)} line {reader.line_num}: missing a value")
                for c in present:
                    values[c].append(row[c])
    except FileNotFoundError as e:
        raise FPTError(f"file {str(path)!r} not found") from e
    except UnicodeDecodeError:
        raw = Path(path).read_bytes()
        try:
            raw.decode("utf-8")
            start = 0
        except UnicodeDecodeError as e:
            start = e.start
        line = raw.count(b"\n", 0, start) + 1
        raise FPTError(f"{where(path, split)} line {line}: byte {raw[start]:#04x} is not UTF-8 text; "
                       f"save the file as UTF-8") from None
    except csv.Error as e:
        raise FPTError(f"{where(path, split)} line {reader.line_num}: {e}") from None
    if present and not values[present[0]]:
        raise FPTError(f"{where(path, split)} has a header but no rows: every split needs at least one example")
    return tuple(values.get(c) for c in columns)


def parse_int_labels(values: list[str], num_classes: int | None, *, path: Path, split: str | None = None,
                     first_line: int | None = 2) -> np.ndarray:
    """Integer labels from text, vectorised: '3' and '3.0' are 3; '0.7', 'inf', 'nan' and words are refused,
    as is a label outside 0..num_classes-1 (when given). Errors name the file's line (`first_line`: the
    line of values[0]; None: records, counted from 0)."""
    row = (lambda i: f"line {first_line + i}") if first_line is not None else (lambda i: f"record {i}")
    if not values:
        return np.empty(0, dtype=np.int64)
    try:
        f = np.asarray(values, dtype=str).astype(np.float64)
    except ValueError:  # find the first word among them
        f = np.empty(len(values))
        for i, v in enumerate(values):
            try:
                f[i] = float(v)
            except ValueError:
                raise FPTError(f"{where(path, split)} {row(i)}: label {v!r} is not an integer") from None
    bad = ~np.isfinite(f) | (f != np.round(f))
    if bad.any():
        i = first_row(bad)
        raise FPTError(f"{where(path, split)} {row(i)}: label {values[i]!r} is not an integer")
    out = f.astype(np.int64)
    if num_classes is not None:
        check_labels(out, num_classes, what=where(path, split), row=row)
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
        what = f"TAPE lmdb {str(path)!r}"
        n = load_data_pickle(io.BytesIO(txn.get(b"num_examples")), what)
        items = [load_data_pickle(io.BytesIO(txn.get(str(i).encode())), what) for i in range(n)]
    env.close()
    return items
