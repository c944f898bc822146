import pytest
import torch

from fpt.core.errors import FPTError
from fpt.tasks import TASKS, build_task, patchify_images, patchify_sequence


@pytest.mark.parametrize("name", TASKS.names())
def test_task_spec_is_consistent(name):
    task = build_task(name)
    spec = task.spec
    assert spec.seq_len > 0 and spec.num_classes >= 2
    assert spec.output_tokens <= spec.seq_len


def test_bit_memory_shapes_and_labels():
    task = build_task("bit-memory")
    assert (task.spec.seq_len, task.spec.token_dim) == (120, 50)
    batch = task.sample(64, torch.Generator().manual_seed(0))
    assert batch.x.shape == (64, 120, 50) and batch.y.shape == (64, 1000)
    flat = batch.x.reshape(64, 6000)
    patterns, query = flat[:, :5000].reshape(64, 5, 1000), flat[:, 5000:]
    target = batch.y * 2 - 1  # back to {-1, +1}
    # the target is one of the five patterns, and the query shows it with about half the bits zeroed
    assert all(any(torch.equal(patterns[i, k], target[i].float()) for k in range(5)) for i in range(64))
    visible = query != 0
    assert torch.equal(query[visible], target.float()[visible])
    assert 0.45 < visible.float().mean().item() < 0.55
    # copying the visible bits and guessing the rest scores about 75%
    guess = torch.where(visible, query, torch.ones_like(query))
    assert 0.70 < (guess == target).float().mean().item() < 0.80


def test_bit_xor_labels():
    task = build_task("bit-xor")
    assert (task.spec.seq_len, task.spec.token_dim, task.spec.output_tokens) == (10, 1, 5)
    batch = task.sample(256, torch.Generator().manual_seed(1))
    bits = (batch.x.reshape(256, 10) > 0).long()
    assert torch.equal(batch.y, bits[:, :5] ^ bits[:, 5:])


def test_eval_splits_are_fixed_per_seed():
    task = build_task("bit-xor")
    a, b, c = task.load(seed=3), task.load(seed=3), task.load(seed=4)
    assert torch.equal(a.splits["test"].x, b.splits["test"].x)
    assert not torch.equal(a.splits["test"].x, c.splits["test"].x)
    assert not torch.equal(a.splits["val"].x, a.splits["test"].x)
    # training batches are fresh draws from the generator
    g = torch.Generator().manual_seed(0)
    assert not torch.equal(a.train_batch(8, g).x, a.train_batch(8, g).x)


def test_patchify_sequence_and_images():
    x = torch.arange(12.0).reshape(1, 12)
    assert patchify_sequence(x, 4, what="t").shape == (1, 3, 4)
    img = torch.arange(2 * 3 * 8 * 8.0).reshape(2, 3, 8, 8)
    p = patchify_images(img, 4, what="t")
    assert p.shape == (2, 4, 48)
    # the first token is the top-left 4x4 patch of every channel
    assert torch.equal(p[0, 0].reshape(3, 4, 4), img[0, :, :4, :4])
    assert torch.equal(p[1, 3].reshape(3, 4, 4), img[1, :, 4:, 4:])


@pytest.mark.parametrize("name,patch", [("bit-xor", 2), ("bit-memory", 3)])
def test_patch_size_must_divide(name, patch):
    with pytest.raises(FPTError, match="does not divide"):
        build_task(name, patch_size=patch)
