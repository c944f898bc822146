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
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml

from fpt.datasets import check_labels, parse_int_labels, read_table
from fpt.errors import FPTError
from fpt.tasks.base import Batch, PaddedTokenData, Task, TaskData, TaskSpec, pad_flat, patchify_images, patchify_sequence
from fpt.tasks.images import ImageData

FORMATS = ("image_folder", "csv", "npz")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
SPLIT_NAMES = ("train", "val", "test")
KEYS = {"format", "path", "train", "val", "test", "num_classes", "val_fraction", "test_fraction", "image_size",
        "channels", "patch_size", "mean", "std", "sequence_column", "label_column", "tokenize", "max_len", "name"}


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
        self._hold_out_missing()

    def _path(self, p) -> Path:
        p = Path(str(p)).expanduser()
        return p if p.is_absolute() else self.base / p

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

    def _classes(self, labels: list[np.ndarray], what: str) -> int:
        k = self.d.get("num_classes")
        k = int(k) if k is not None else int(max(int(y.max()) for y in labels if len(y)) + 1)
        for y in labels:
            check_labels(y, k, what=what)
        return max(k, 2)

    # ---- image folder ------------------------------------------------------------------------

    def _read_image_folder(self) -> dict:
        from PIL import Image

        size, channels = int(self.d.get("image_size", 32)), int(self.d.get("channels", 3))
        if channels not in (1, 3):
            raise FPTError(f"channels must be 1 or 3, got {channels}")
        classes = sorted(p.name for p in self.files["train"].iterdir() if p.is_dir())
        if len(classes) < 2:
            raise FPTError(f"image folder {str(self.files['train'])!r} needs one subfolder per class (found {len(classes)})")
        splits = {}
        for split, folder in self.files.items():
            xs, ys = [], []
            for label, cls in enumerate(classes):
                for f in sorted((folder / cls).glob("*")) if (folder / cls).is_dir() else []:
                    if f.suffix.lower() not in IMAGE_SUFFIXES:
                        continue
                    try:
                        img = Image.open(f).convert("L" if channels == 1 else "RGB").resize((size, size), Image.BILINEAR)
                    except OSError as e:
                        raise FPTError(f"cannot read image {str(f)!r}: {e}") from e
                    a = np.asarray(img, dtype=np.uint8)
                    xs.append(a[None] if channels == 1 else a.transpose(2, 0, 1))  # (C, H, W)
                    ys.append(label)
            if not xs:
                raise FPTError(f"no images under {str(folder)!r} (class subfolders {', '.join(classes)})")
            splits[split] = {"x": np.stack(xs), "y": np.array(ys, dtype=np.int64)}
        p = int(self.d.get("patch_size", 4))
        patchify_images(torch.zeros(1, channels, size, size), p, what=f"the {size}x{size} images of {self.name}")
        k = self._classes([s["y"] for s in splits.values()], what=self.name)
        self.spec = TaskSpec(name=self.name, input_kind="continuous", token_dim=channels * p * p,
                             seq_len=(size // p) ** 2, num_classes=k)
        return splits

    def _prepare_images(self, x: torch.Tensor) -> torch.Tensor:
        if "mean" in self.d or "std" in self.d:
            c = x.shape[1]
            mean = torch.tensor(self.d.get("mean", [0.0] * c), dtype=x.dtype).reshape(-1, 1, 1)
            std = torch.tensor(self.d.get("std", [1.0] * c), dtype=x.dtype).reshape(-1, 1, 1)
            x = (x - mean) / std
        return patchify_images(x, int(self.d.get("patch_size", 4)), what=self.name)

    # ---- CSV of token sequences --------------------------------------------------------------

    def _read_csv(self) -> dict:
        cols = (str(self.d.get("sequence_column", "seq")), str(self.d.get("label_column", "label")))
        mode, max_len = self.d.get("tokenize", "chars"), int(self.d.get("max_len", 512))
        if mode not in ("chars", "whitespace"):
            raise FPTError(f"tokenize must be chars or whitespace, got {mode!r}")
        k = self.d.get("num_classes")
        raw = {}
        for split, path in self.files.items():
            seqs, labels = read_table(path, cols)
            toks = [list(s) if mode == "chars" else s.split() for s in seqs]
            raw[split] = ([t[:max_len] for t in toks], parse_int_labels(labels, None if k is None else int(k), path=path))
        # vocabulary from the training file: 0 padding, 1 unknown, then tokens in sorted order
        vocab = {t: i + 2 for i, t in enumerate(sorted({t for seq in raw["train"][0] for t in seq}))}
        splits = {}
        for split, (toks, y) in raw.items():
            if any(len(t) == 0 for t in toks):
                raise FPTError(f"{str(self.files[split])!r}: an empty sequence")
            lengths = np.array([len(t) for t in toks], dtype=np.int64)
            ids = np.fromiter((vocab.get(t, 1) for seq in toks for t in seq), dtype=np.int32, count=int(lengths.sum()))
            splits[split] = {"x": pad_flat(ids, lengths, max_len, what=self.name).numpy(), "y": y, "len": lengths}
        self.vocab = vocab
        nc = self._classes([y for _, y in raw.values()], what=self.name)
        self.spec = TaskSpec(name=self.name, input_kind="tokens", vocab_size=len(vocab) + 2,
                             seq_len=int(max(s["len"].max() for s in splits.values())), num_classes=nc, padded=True)
        return splits

    # ---- npz ---------------------------------------------------------------------------------

    def _read_npz(self) -> dict:
        path = self.files["train"]
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as e:
            raise FPTError(f"cannot read {str(path)!r} as .npz: {type(e).__name__}") from e
        if "x_train" not in arrays or "y_train" not in arrays:
            raise FPTError(f"{str(path)!r} needs arrays x_train and y_train; it has {', '.join(arrays)}")
        splits = {}
        for s in SPLIT_NAMES:
            if f"x_{s}" in arrays:
                x, y = arrays[f"x_{s}"], arrays.get(f"y_{s}")
                if y is None or len(y) != len(x):
                    raise FPTError(f"{str(path)!r}: x_{s} has {len(x)} rows but y_{s} has "
                                   f"{'none' if y is None else len(y)}")
                splits[s] = {"x": x, "y": y.astype(np.int64).reshape(len(y))}
                if f"len_{s}" in arrays:
                    splits[s]["len"] = arrays[f"len_{s}"].astype(np.int64)
        x = splits["train"]["x"]
        k = self._classes([s["y"] for s in splits.values()], what=str(path))
        if np.issubdtype(x.dtype, np.integer):
            if x.ndim != 2:
                raise FPTError(f"{str(path)!r}: integer x_train must be (N, T) token ids, got {x.shape}")
            for s in splits.values():
                if "len" not in s:  # the position after the last non-zero id
                    nz = s["x"] != 0
                    s["len"] = np.where(nz.any(1), s["x"].shape[1] - np.argmax(nz[:, ::-1], axis=1), 1)
            vocab = int(max(int(s["x"].max()) for s in splits.values())) + 1
            self.spec = TaskSpec(name=self.name, input_kind="tokens", vocab_size=max(vocab, 2), seq_len=x.shape[1],
                                 num_classes=k, padded=True)
        else:
            if x.ndim == 2:
                p = int(self.d.get("patch_size", 1))
                for s in splits.values():
                    s["x"] = patchify_sequence(torch.from_numpy(s["x"].astype(np.float32)), p, what=self.name).numpy()
                x = splits["train"]["x"]
            if x.ndim != 3:
                raise FPTError(f"{str(path)!r}: float x_train must be (N, T, D) or (N, L), got {x.shape}")
            self.spec = TaskSpec(name=self.name, input_kind="continuous", token_dim=x.shape[2], seq_len=x.shape[1],
                                 num_classes=k)
        return splits

    # ---- data --------------------------------------------------------------------------------

    def load(self, *, seed: int, data_dir: str | None = None) -> TaskData:
        s = self._splits
        if self.d["format"] == "image_folder":
            images = {n: (torch.from_numpy(v["x"]), torch.from_numpy(v["y"])) for n, v in s.items()}
            return ImageData(self.spec, images, self._prepare_images, augment_train=False)
        if self.spec.input_kind == "tokens":
            splits = {n: Batch(torch.from_numpy(v["x"]), torch.from_numpy(v["y"])[:, None],
                               torch.from_numpy(v["len"])) for n, v in s.items()}
            return PaddedTokenData(self.spec, splits)
        return TaskData(self.spec, {n: Batch(torch.from_numpy(v["x"]).float(), torch.from_numpy(v["y"])[:, None])
                                    for n, v in s.items()})
