"""Image tasks: MNIST, CIFAR-10, and CIFAR-10 as in the Long Range Arena (grayscale, 1x1 patches).

Images are held in memory as uint8 tensors (N, C, H, W). Evaluation splits are converted once to
model-ready patches; training batches are drawn, augmented (CIFAR: random crop with 4-pixel padding,
horizontal flip, rotation up to 20 degrees, as the paper's code), normalised and patchified
vectorised over the batch. The validation split is held out from the training set with a fixed seed
(`val_size` images, the same for every run seed); the full test set is the test split.
"""
from __future__ import annotations

import tarfile
from pathlib import Path

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from fpt.datasets import (check_labels, data_root, download, find_first, load_cached, read_cifar_batches,
                          read_idx, save_cached)
from fpt.core.errors import FPTError
from fpt.tasks.base import TASKS, Task, TaskBudget, TaskData, TaskSpec, patchify_images
from fpt.tasks.image_data import ImageData

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
GRAY = (0.2989, 0.5870, 0.1140)  # ITU-R 601-2 luma, as PIL / torchvision Grayscale

# Canonical sources (the torchvision mirrors) and the md5 of each archive.
MNIST_FILES = {
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/{}.gz"
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


def hold_out(x: np.ndarray, y: np.ndarray, val_size: int, *, what: str):
    """Split a fixed, seeded `val_size` examples off the training set (the same for every run seed)."""
    if not 0 < val_size < len(y):
        raise FPTError(f"val_size must be in 1..{len(y) - 1} for {what}, got {val_size}")
    order = np.random.default_rng(0).permutation(len(y))
    val, train = order[:val_size], order[val_size:]
    return (x[train], y[train]), (x[val], y[val])


def _tensors(x: np.ndarray, y: np.ndarray):
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64))


def image_folder_candidates(name: str, data_dir) -> list[Path]:
    root = data_root(data_dir)
    return [root / name, root]


# ---- MNIST ---------------------------------------------------------------------------------------

def mnist_folder(data_dir, *, must_exist: bool = True) -> Path:
    for folder in image_folder_candidates("mnist", data_dir):
        if all((folder / n).exists() or (folder / f"{n}.gz").exists() for n in MNIST_FILES):
            return folder
    if not must_exist:
        return data_root(data_dir) / "mnist"
    root = data_root(data_dir)
    names = ", ".join(f"{n}[.gz]" for n in MNIST_FILES)
    raise FPTError(f"MNIST not found: looked for {names} in {str(root / 'mnist')!r} and {str(root)!r}; "
                   "run `fpt data prepare mnist` or pass --data-dir")


def load_mnist_arrays(data_dir) -> dict[str, np.ndarray]:
    folder = mnist_folder(data_dir)
    sources = [folder / n if (folder / n).exists() else folder / f"{n}.gz" for n in MNIST_FILES]
    cached = load_cached(folder, "mnist", sources)
    if cached is not None:
        return cached
    xtr, ytr, xte, yte = (read_idx(p) for p in sources)
    for x, y, n in ((xtr, ytr, 60000), (xte, yte, 10000)):
        if x.shape != (n, 28, 28) or y.shape != (n,):
            raise FPTError(f"MNIST in {str(folder)!r}: images {x.shape} and labels {y.shape}, "
                           f"expected ({n}, 28, 28) and ({n},)")
        check_labels(y, 10, what=f"MNIST labels in {str(folder)!r}")
    arrays = {"x_train": xtr, "y_train": ytr, "x_test": xte, "y_test": yte}
    save_cached(folder, "mnist", sources, arrays)
    return arrays


def prepare_mnist(data_dir) -> str:
    folder = mnist_folder(data_dir, must_exist=False)
    try:
        folder = mnist_folder(data_dir)
    except FPTError:
        for name, md5 in MNIST_FILES.items():
            if not (folder / f"{name}.gz").exists():
                download(MNIST_URL.format(name), folder / f"{name}.gz", md5=md5)
    a = load_mnist_arrays(data_dir)
    return f"MNIST in {folder}: {len(a['y_train'])} train, {len(a['y_test'])} test images (decoded cache written)"


@TASKS.register("mnist")
class MNIST(Task):
    """MNIST digits, pixels in [0, 1], brought to 32x32, 4x4 patches: 64 tokens of width 16, 10 classes.

    `fit: resize` (default) scales the 28x28 digits to 32x32 bilinearly, as the paper's pipeline
    (torchvision Resize); `fit: pad` zero-pads 2 pixels on each side instead (lossless).
    """

    budgets = {
        # NOTE: MNIST on a frozen body underfits (train accuracy below test) at this length: without
        # dropout, at a 3x higher peak rate decayed to 0 (cosine), it learns more per step than the
        # paper's constant 1e-3 with dropout 0.1 (96.65% after 5,000 steps that way; docs/results.md).
        "cpu": TaskBudget(steps=8000, eval_every=2000, target_accuracy=0.97,
                          lr=3e-3, lr_schedule="cosine", warmup_steps=200, dropout=0.0),
        "gpu": TaskBudget(steps=4000, eval_every=1000, batch_size=64, target_accuracy=0.97,
                          lr=3e-3, lr_schedule="cosine", warmup_steps=200, dropout=0.0),
        "paper": TaskBudget(steps=20_000, eval_every=1000, target_accuracy=0.98),
    }
    # cpu's recipe for a 12 x 768 body (MPNet, 6-8x MiniLM's step): 2,000 steps, the cosine decaying to 0 over
    # them (a complete recipe, not a truncated cpu run); 48 minutes on the faster bf16 host
    budgets["cpu-large"] = replace(budgets["cpu"], steps=2000, eval_every=500)
    options = {"patch_size": 4, "val_size": 5000, "fit": "resize"}
    data_folder = "mnist/"
    paper_column = "mnist"

    @classmethod
    def prepare_data(cls, data_dir, **_) -> str:
        return prepare_mnist(data_dir)

    def __init__(self, **options):
        super().__init__(**options)
        if self.opts["fit"] not in ("resize", "pad"):
            raise FPTError(f"mnist option fit must be resize or pad, got {self.opts['fit']!r}")
        p = self.opts["patch_size"]
        patchify_images(torch.zeros(1, 1, 32, 32), p, what="MNIST (32x32)")  # validates p
        self.spec = TaskSpec(name="mnist", input_kind="continuous", token_dim=p * p, seq_len=(32 // p) ** 2,
                             num_classes=10)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 28, 28) in [0, 1] -> (B, 64, 16) for p = 4."""
        if self.opts["fit"] == "pad":
            x = F.pad(x, (2, 2, 2, 2))
        else:
            x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).clamp(0, 1)
        return patchify_images(x, self.opts["patch_size"], what="MNIST")

    def load(self, *, seed: int, data_dir: str | None = None) -> TaskData:
        a = load_mnist_arrays(data_dir)
        (xtr, ytr), (xva, yva) = hold_out(a["x_train"], a["y_train"], self.opts["val_size"], what="MNIST")
        images = {"train": _tensors(xtr[:, None], ytr), "val": _tensors(xva[:, None], yva),
                  "test": _tensors(a["x_test"][:, None], a["y_test"])}
        data = ImageData(self.spec, images, self.prepare, augment_train=False)
        folder = mnist_folder(data_dir)
        data.sources = {s: f"MNIST in {str(folder)!r} ({f}, split {s})" for s, f in
                        (("train", "train-images"), ("val", "train-images"), ("test", "t10k-images"))}
        return data


# ---- CIFAR-10 ------------------------------------------------------------------------------------

def cifar_folder(data_dir, *, must_exist: bool = True) -> Path:
    root = data_root(data_dir)
    candidates = [root / "cifar10" / "cifar-10-batches-py", root / "cifar-10-batches-py", root / "cifar10", root]
    for folder in candidates:
        if all((folder / n).is_file() for n in CIFAR_TRAIN + ["test_batch"]):
            return folder
    if not must_exist:
        return candidates[0]
    raise FPTError(f"CIFAR-10 not found: looked for cifar-10-batches-py/{{data_batch_1..5,test_batch}} in "
                   f"{str(root / 'cifar10')!r} and {str(root)!r}; run `fpt data prepare cifar10` or pass --data-dir")


def load_cifar_arrays(data_dir) -> dict[str, np.ndarray]:
    folder = cifar_folder(data_dir)
    xtr, ytr = read_cifar_batches(folder, CIFAR_TRAIN)
    xte, yte = read_cifar_batches(folder, ["test_batch"])
    if len(ytr) != 50000 or len(yte) != 10000:
        raise FPTError(f"CIFAR-10 in {str(folder)!r} has {len(ytr)} train and {len(yte)} test images; "
                       "expected 50000 and 10000")
    return {"x_train": xtr, "y_train": ytr, "x_test": xte, "y_test": yte}


def prepare_cifar(data_dir) -> str:
    try:
        folder = cifar_folder(data_dir)
    except FPTError:
        root = data_root(data_dir) / "cifar10"
        archive = root / "cifar-10-python.tar.gz"
        if not archive.exists():
            download(CIFAR_URL, archive, md5=CIFAR_MD5)
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
        folder = cifar_folder(data_dir)
    a = load_cifar_arrays(data_dir)
    return f"CIFAR-10 in {folder}: {len(a['y_train'])} train, {len(a['y_test'])} test images"


class _CIFARBase(Task):
    data_folder = "cifar10/cifar-10-batches-py/"

    @classmethod
    def prepare_data(cls, data_dir, **_) -> str:
        return prepare_cifar(data_dir)  # one download for cifar10 and cifar10-lra

    def load(self, *, seed: int, data_dir: str | None = None) -> TaskData:
        a = load_cifar_arrays(data_dir)
        (xtr, ytr), (xva, yva) = hold_out(a["x_train"], a["y_train"], self.opts["val_size"], what="CIFAR-10")
        xte, yte = a["x_test"], a["y_test"]
        notes = []
        if self.opts["test_size"] is not None:  # a fixed seeded subset, the same for every run (budgets.py)
            n = self.opts["test_size"]
            if not 0 < n <= len(yte):
                raise FPTError(f"test_size must be in 1..{len(yte)} for CIFAR-10, got {n}")
            keep = np.sort(np.random.default_rng(0).permutation(len(yte))[:n])
            xte, yte = xte[keep], yte[keep]
            notes.append(f"test on a fixed subset of {n} of the {len(a['y_test'])} test images")
        images = {"train": _tensors(xtr, ytr), "val": _tensors(xva, yva), "test": _tensors(xte, yte)}
        data = ImageData(self.spec, images, self.prepare, augment_train=self.opts["augment"])
        data.notes = notes
        data.sources = {s: f"CIFAR-10 in {str(cifar_folder(data_dir))!r} (split {s})" for s in images}
        return data


@TASKS.register("cifar10")
class CIFAR10(_CIFARBase):
    """CIFAR-10, per-channel normalised, 4x4 RGB patches: 64 tokens of width 48, 10 classes."""

    budgets = {
        # NOTE: CIFAR-10 gets MNIST's recipe (same tokens, same underfitting frozen body): 8,000 steps are
        # 5 epochs, where the paper trains 400,000 steps. On MNIST and CIFAR-10 the LSTM row's step is
        # 3.5x FPT's: its runs take 75-95 minutes (91 and 94 on the slower bf16 host), the budget's
        # one excess, kept so that every row of a task trains the same steps.
        "cpu": TaskBudget(steps=8000, eval_every=2000, target_accuracy=0.68,
                          lr=3e-3, lr_schedule="cosine", warmup_steps=200, dropout=0.0),
        "gpu": TaskBudget(steps=4000, eval_every=1000, batch_size=64, target_accuracy=0.68,
                          lr=3e-3, lr_schedule="cosine", warmup_steps=200, dropout=0.0),
        "paper": TaskBudget(steps=400_000, eval_every=10_000, target_accuracy=0.68),
    }
    # NOTE: cpu-large (MPNet): 2,000 steps at a peak of 1e-3, not cpu's 3e-3. At 3e-3 MPNet's pretrained
    # body sat at chance (validation 10.7% and 10.3% at steps 500 and 1,000, training loss 2.30 = ln 10),
    # where MiniLM's learns at that rate and MPNet's MNIST does too (why is not measured). At the paper's
    # 1e-3 its training loss fell below 2.0 by step 300 (results/pretraining-mpnet-cpu-large/stopped/).
    budgets["cpu-large"] = replace(budgets["cpu"], steps=2000, eval_every=500, lr=1e-3)
    options = {"patch_size": 4, "val_size": 5000, "augment": True, "test_size": None}
    paper_column = "cifar10"

    def __init__(self, **options):
        super().__init__(**options)
        p = self.opts["patch_size"]
        patchify_images(torch.zeros(1, 3, 32, 32), p, what="CIFAR-10")
        self.spec = TaskSpec(name="cifar10", input_kind="continuous", token_dim=3 * p * p,
                             seq_len=(32 // p) ** 2, num_classes=10)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(CIFAR_MEAN, device=x.device)[:, None, None]
        std = torch.tensor(CIFAR_STD, device=x.device)[:, None, None]
        return patchify_images((x - mean) / std, self.opts["patch_size"], what="CIFAR-10")


@TASKS.register("cifar10-lra")
class CIFAR10LRA(_CIFARBase):
    """CIFAR-10 as in LRA: grayscale, normalised with mean 0.5 and std 0.5, 1x1 patches: 1024 tokens of width 1."""

    budgets = {
        # NOTE: 1024 tokens a image: a step of 8 costs about 15 of MNIST's. Evaluated once, at the end, on
        # 1,000 held-out and 2,000 test images (a fixed seeded subset of the 10,000; the report says so):
        # the full test set alone would take most of the budget. Cannot converge here (paper: 3e5 steps).
        "cpu": TaskBudget(steps=500, eval_every=500, batch_size=8, target_accuracy=0.38,
                          task_options={"val_size": 1000, "test_size": 2000}),
        "gpu": TaskBudget(steps=2000, eval_every=1000, target_accuracy=0.38),
        "paper": TaskBudget(steps=600_000, eval_every=10_000, target_accuracy=0.38),
    }
    options = {"patch_size": 1, "val_size": 5000, "augment": True, "test_size": None}
    paper_column = "cifar10_lra"

    def __init__(self, **options):
        super().__init__(**options)
        p = self.opts["patch_size"]
        patchify_images(torch.zeros(1, 1, 32, 32), p, what="CIFAR-10 LRA")
        self.spec = TaskSpec(name="cifar10-lra", input_kind="continuous", token_dim=p * p,
                             seq_len=(32 // p) ** 2, num_classes=10)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        gray = (x * torch.tensor(GRAY, device=x.device)[:, None, None]).sum(1, keepdim=True)  # (B, 1, H, W)
        return patchify_images((gray - 0.5) / 0.5, self.opts["patch_size"], what="CIFAR-10 LRA")
