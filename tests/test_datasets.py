"""Real-data tasks on tiny fixtures generated here (never the shared copies): readers, error lines,
splits, augmentation, ListOps generation and tokenisation, homology, custom task files, `fpt data`."""
from __future__ import annotations

import gzip
import pickle
import random

import numpy as np
import pytest
import torch

from fpt.cli import main
from fpt.core.errors import FPTError
from fpt.tasks import TASKS, build_task
from fpt.tasks import image_data
from fpt.tasks import images as images_mod
from fpt.tasks import listops as lo


# ---- fixtures ---------------------------------------------------------------------------------------

def write_idx(path, array: np.ndarray, *, gz: bool = True, cut: int = 0):
    codes = {np.dtype(np.uint8): 0x08}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    raw = header + array.tobytes()
    raw = raw[: len(raw) - cut]
    (gzip.open(path, "wb") if gz else open(path, "wb")).write(raw)


def make_mnist(folder, n_train=60000, n_test=10000, *, gz=True, cut=0):
    # NOTE: MNIST's sizes are checked, so the fixture has the real counts, with tiny (zero) content
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = np.zeros((n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n).astype(np.uint8)
        x[np.arange(n), y, y] = 255  # a pixel that encodes the label
        sfx = ".gz" if gz else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{sfx}", x, gz=gz, cut=cut if prefix == "t10k" else 0)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{sfx}", y, gz=gz)


def make_cifar(folder):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (10000, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": rng.integers(0, 10, 10000).tolist()}, f)


# ---- MNIST / CIFAR ----------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False])
def test_mnist_loads_idx_and_caches(tmp_path, gz):
    make_mnist(tmp_path / "mnist", gz=gz)
    task = build_task("mnist")
    assert (task.spec.seq_len, task.spec.token_dim) == (64, 16)
    data = task.load(seed=0, data_dir=str(tmp_path))
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 55000, "val": 5000, "test": 10000}
    assert data.splits["test"].x.shape == (10000, 64, 16)
    assert 0 <= data.splits["test"].x.min() and data.splits["test"].x.max() <= 1
    batch = data.train_batch(8, torch.Generator().manual_seed(0))
    assert batch.x.shape == (8, 64, 16) and batch.y.shape == (8, 1)
    assert list((tmp_path / "mnist").glob("fpt-cache-mnist.npz"))
    again = build_task("mnist").load(seed=1, data_dir=str(tmp_path))  # from the cache; same fixed val split
    assert torch.equal(again.splits["val"].y, data.splits["val"].y)


def test_mnist_truncated_idx_is_one_line_error(tmp_path, capsys):
    make_mnist(tmp_path / "mnist", cut=100)
    with pytest.raises(FPTError, match="truncated"):
        build_task("mnist").load(seed=0, data_dir=str(tmp_path))
    assert main(["data", "prepare", "mnist", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "truncated" in err


def test_missing_data_names_files_and_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("FPT_DATA", raising=False)
    with pytest.raises(FPTError, match="train-images-idx3-ubyte.*" + str(tmp_path / "mnist")):
        build_task("mnist").load(seed=0, data_dir=str(tmp_path))
    for task, names in (("cifar10", "data_batch_1"), ("listops", "basic_train.tsv"), ("homology", "train.csv")):
        with pytest.raises(FPTError, match=names):
            build_task(task).load(seed=0, data_dir=str(tmp_path))
    monkeypatch.setenv("FPT_DATA", str(tmp_path / "env"))
    with pytest.raises(FPTError, match=str(tmp_path / "env")):
        build_task("mnist").load(seed=0)


def test_cifar_and_lra_shapes(tmp_path):
    make_cifar(tmp_path / "cifar10" / "cifar-10-batches-py")
    rgb = build_task("cifar10").load(seed=0, data_dir=str(tmp_path))
    assert len(rgb.splits["train"]) + len(rgb.splits["val"]) == 50000 and len(rgb.splits["test"]) == 10000
    assert rgb.splits["test"].x.shape[1:] == (64, 48)
    lra = build_task("cifar10-lra").load(seed=0, data_dir=str(tmp_path))
    assert lra.splits["test"].x.shape[1:] == (1024, 1)
    assert -1 <= lra.splits["test"].x.min() and lra.splits["test"].x.max() <= 1
    b = lra.train_batch(4, torch.Generator().manual_seed(0))
    assert b.x.shape == (4, 1024, 1)
    g1, g2 = (rgb.train_batch(4, torch.Generator().manual_seed(3)) for _ in range(2))
    assert torch.equal(g1.x, g2.x)  # seeded augmentation


def test_augmentation_pieces():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 32, 32)
    assert torch.equal(image_data.random_crop(x, 0, g), x)
    assert torch.allclose(image_data.random_rotate(x, 0.0, g), x)
    crop = image_data.random_crop(x, 4, g)
    assert crop.shape == x.shape
    flipped = image_data.random_flip(x, g)
    assert all(torch.equal(f, o) or torch.equal(f, o.flip(-1)) for f, o in zip(flipped, x))
    # rotations up to 20 degrees keep the middle of a constant image and blank some corners
    rot = image_data.random_rotate(torch.ones(64, 1, 32, 32), 20.0, g)
    assert (rot[:, :, 8:24, 8:24] == 1).all() and (rot[:, :, :2, :2] == 0).any()


# ---- ListOps ----------------------------------------------------------------------------------------

def _eval(tokens):
    """Evaluate a ListOps token list independently of the generator (a stack machine)."""
    stack = []
    for t in tokens:
        if t == "]":
            args = []
            while not isinstance(stack[-1], str):
                args.append(stack.pop())
            op = stack.pop()
            args = sorted(args)
            m = len(args) // 2
            stack.append({"[MIN": args[0], "[MAX": args[-1], "[SM": sum(args) % 10,
                          "[MED": args[m] if len(args) % 2 else (args[m - 1] + args[m]) // 2}[op])
        elif t.startswith("["):
            stack.append(t)
        else:
            stack.append(int(t))
    return stack[0]


def test_listops_generator_is_seeded_valid_and_deduplicated():
    exprs, labels = lo.generate(60, seed=5)
    assert lo.generate(60, seed=5)[0] == exprs and lo.generate(60, seed=6)[0] != exprs
    assert len(set(exprs)) == 60
    for e, y in zip(exprs, labels):
        tokens = lo.to_source(e).split()
        assert 500 < len(tokens) < 2000 and _eval(tokens) == y
        assert lo.to_compact("( " + " ) ".join(tokens) + " )") == e  # LRA's parenthesised form reads back


def test_listops_files_tokeniser_and_paper_pipeline(tmp_path, capsys):
    assert main(["data", "prepare", "listops", "--data-dir", str(tmp_path), "--sizes", "20,5,5"]) == 0
    assert "train 20" in capsys.readouterr().out
    data = build_task("listops").load(seed=0, data_dir=str(tmp_path))
    spec = build_task("listops").spec
    assert spec.padded and spec.vocab_size == 16 and spec.seq_len == 1999
    test = data.splits["test"]
    assert len(test) == 5 and (test.lengths > 500).all()
    assert (test.x == lo.VOCAB.index("]")).any()  # the default tokeniser keeps the closing bracket
    b = data.train_batch(4, torch.Generator().manual_seed(0))
    assert b.x.dtype == torch.long and b.x.shape[1] == b.lengths.max()
    assert all((row[n:] == 0).all() and (row[:n] != 0).all() for row, n in zip(b.x, b.lengths))
    paper = build_task("listops", paper_pipeline=True)
    pd = paper.load(seed=0, data_dir=str(tmp_path))
    assert paper.spec.seq_len == 512 and (pd.splits["test"].lengths <= 512).all()
    assert not (pd.splits["test"].x == lo.VOCAB.index("]")).any()


def test_listops_bad_label(tmp_path):
    (tmp_path / "listops").mkdir()
    for s in ("train", "val", "test"):
        (tmp_path / "listops" / f"basic_{s}.tsv").write_text("Source\tTarget\n[MAX 2 9 ]\t12\n")
    with pytest.raises(FPTError, match="out of range"):
        build_task("listops").load(seed=0, data_dir=str(tmp_path))


# ---- remote homology --------------------------------------------------------------------------------

def test_homology_csv(tmp_path, capsys):
    folder = tmp_path / "remote_homology"
    folder.mkdir()
    rng = random.Random(0)
    rows = lambda n, long=0: "seq,label\n" + "".join(  # noqa: E731
        f"{''.join(rng.choice('ACDEFGHIKLMNPQRSTVWY') for _ in range(1100 if i < long else rng.randint(5, 40)))},"
        f"{rng.randint(0, 1194)}\n" for i in range(n))
    (folder / "train.csv").write_text(rows(30, long=2))
    (folder / "valid.csv").write_text(rows(6))
    data = build_task("homology").load(seed=0, data_dir=str(tmp_path))
    assert len(data.splits["train"]) == 30 and len(data.splits["val"]) == 6
    assert int(data.splits["train"].lengths.max()) == 1024 and "2 sequences over 1024 truncated" in data.notes[0]
    assert any("`test` is the valid split" in n for n in data.notes)  # no fold-holdout file: said, not hidden
    (folder / "test_fold_holdout.csv").write_text(rows(4))
    data = build_task("homology").load(seed=0, data_dir=str(tmp_path))
    assert len(data.splits["test"]) == 4 and not any("valid split" in n for n in data.notes)
    dropped = build_task("homology", long_sequences="drop").load(seed=0, data_dir=str(tmp_path))
    assert len(dropped.splits["train"]) == 28
    (folder / "valid.csv").write_text("seq,label\nACDE,1195\n")
    with pytest.raises(FPTError, match="label 1195 out of range 0..1194"):
        build_task("homology").load(seed=0, data_dir=str(tmp_path))
    assert main(["data", "prepare", "homology", "--data-dir", str(tmp_path)]) == 2
    assert main(["data", "prepare", "homology", "--data-dir", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "out of range" in err[0] and "train.csv" in err[1]


# ---- custom tasks -----------------------------------------------------------------------------------

def test_custom_csv_task_and_bad_label(tmp_path, capsys):
    (tmp_path / "d.csv").write_text("text,y\n" + "".join(f"{'ab' * (i % 5 + 1)}c,{i % 3}\n" for i in range(40)))
    (tmp_path / "t.yaml").write_text("format: csv\npath: d.csv\nsequence_column: text\nlabel_column: y\n")
    task = build_task(str(tmp_path / "t.yaml"))
    assert task.spec.input_kind == "tokens" and task.spec.num_classes == 3 and task.spec.vocab_size == 5
    data = task.load(seed=0)
    assert sum(len(b) for b in data.splits.values()) == 40 and set(data.splits) == {"train", "val", "test"}
    (tmp_path / "bad.yaml").write_text("format: csv\npath: d.csv\nsequence_column: text\nlabel_column: y\n"
                                       "num_classes: 2\n")
    with pytest.raises(FPTError, match="label 2 out of range 0..1"):
        build_task(str(tmp_path / "bad.yaml"))


def test_custom_npz_and_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "a.npz", x_train=rng.normal(size=(20, 12)).astype(np.float32), y_train=np.arange(20) % 2,
             x_test=rng.normal(size=(6, 12)).astype(np.float32), y_test=np.arange(6) % 2)
    (tmp_path / "n.yaml").write_text("format: npz\npath: a.npz\npatch_size: 4\n")
    task = build_task(str(tmp_path / "n.yaml"))
    assert (task.spec.seq_len, task.spec.token_dim, task.spec.num_classes) == (3, 4, 2)
    data = task.load(seed=0)
    assert len(data.splits["test"]) == 6 and data.splits["train"].x.shape[1:] == (3, 4)
    from PIL import Image
    for cls in ("cat", "dog"):
        (tmp_path / "img" / cls).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(tmp_path / "img" / cls / f"{i}.png")
    (tmp_path / "i.yaml").write_text("format: image_folder\npath: img\nimage_size: 8\npatch_size: 4\n"
                                     "val_fraction: 0.2\ntest_fraction: 0.2\n")
    task = build_task(str(tmp_path / "i.yaml"))
    assert (task.spec.seq_len, task.spec.token_dim, task.spec.num_classes) == (4, 48, 2)
    data = task.load(seed=0)
    assert data.train_batch(3, torch.Generator().manual_seed(0)).x.shape == (3, 4, 48)
    assert len(data.splits["val"]) == 2 and len(data.splits["test"]) == 2


def test_new_tasks_are_registered():
    assert {"mnist", "cifar10", "cifar10-lra", "listops", "homology"} <= set(TASKS.names())


@pytest.mark.parametrize("kind", ["tokens", "images"])
def test_custom_tasks_train_end_to_end(tiny_backbones, tmp_path, kind):
    """A padded token task and an image task through the real training loop on a tiny GPT-2."""
    from fpt.core.config import TrainConfig
    from fpt.run.launch import train

    if kind == "tokens":
        rows = "".join(f"{'xy' * (i % 7 + 1)},{i % 2}\n" for i in range(60))
        (tmp_path / "d.csv").write_text("seq,label\n" + rows)
        (tmp_path / "t.yaml").write_text("format: csv\npath: d.csv\n")
    else:  # NOTE: not MNIST itself: evaluating 15,000 images twice is too slow for the suite
        x = np.random.default_rng(0).random((40, 1, 8, 8), dtype=np.float32)
        np.savez(tmp_path / "a.npz", x_train=images_mod.patchify_images(torch.from_numpy(x), 4, what="t").numpy(),
                 y_train=np.arange(40) % 2)
        (tmp_path / "t.yaml").write_text("format: npz\npath: a.npz\n")
    task = str(tmp_path / "t.yaml")
    cfg = TrainConfig(task=task, backbone=tiny_backbones["gpt2"], steps=4, eval_every=2, batch_size=8,
                      data_dir=str(tmp_path), run_dir=str(tmp_path / "run"), device="cpu")
    result = train(cfg, progress=False)
    assert 0 <= result["test_accuracy"] <= 1
