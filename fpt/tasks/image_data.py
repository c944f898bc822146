"""Images held in memory as uint8 (N, C, H, W): `ImageData`, and the augmentation its training batches use.

Shared by the built-in image tasks (fpt/tasks/images.py) and image-folder task files (fpt/tasks/custom/),
so neither task module imports the other.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fpt.tasks.base import Batch, TaskData, TaskSpec


# ---- augmentation, vectorised over the batch ---------------------------------------------------

def random_crop(x: torch.Tensor, pad: int, g: torch.Generator) -> torch.Tensor:
    """(B, C, H, W): zero-pad by `pad`, then crop H x W at a random offset per image."""
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))  # (B, C, H+2p, W+2p)
    oy = torch.randint(0, 2 * pad + 1, (b, 1), generator=g)
    ox = torch.randint(0, 2 * pad + 1, (b, 1), generator=g)
    rows = (oy + torch.arange(h)).to(x.device)  # (B, H)
    cols = (ox + torch.arange(w)).to(x.device)  # (B, W)
    out = xp[torch.arange(b, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2)


def random_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    flip = (torch.rand(x.shape[0], generator=g) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_rotate(x: torch.Tensor, degrees: float, g: torch.Generator) -> torch.Tensor:
    """Rotate each image by an angle uniform in [-degrees, degrees] about its centre (nearest, zero fill)."""
    b = x.shape[0]
    angle = (torch.rand(b, generator=g) * 2 - 1) * math.radians(degrees)
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros(b)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The paper's CIFAR training augmentation on (B, C, H, W) floats in [0, 1]."""
    return random_rotate(random_flip(random_crop(x, 4, g), g), 20.0, g)


# ---- data ----------------------------------------------------------------------------------------

def prepare_images(prepare, x: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, C, H, W) -> `prepare`d model tokens, in chunks to bound the float copy."""
    return torch.cat([prepare(x[i:i + 2048].float() / 255) for i in range(0, len(x), 2048)])


class ImageData(TaskData):
    """uint8 images in memory; `prepare` maps (B, C, H, W) floats in [0, 1] to model tokens."""

    def __init__(self, spec: TaskSpec, images: dict[str, tuple[torch.Tensor, torch.Tensor]], prepare,
                 *, augment_train: bool):
        self.prepare, self.augment_train = prepare, augment_train
        self.train_images, self.train_labels = images["train"]
        splits = {"train": Batch(self.train_images, self.train_labels[:, None])}
        for name, (x, y) in images.items():
            if name != "train":  # model-ready once
                splits[name] = Batch(prepare_images(prepare, x), y[:, None])
        super().__init__(spec, splits)

    def model_ready(self, split: str) -> bool:
        return split != "train"  # uint8 images, made model-ready batch by batch

    def ready(self, split: str) -> Batch:
        if split != "train":
            return self.splits[split]
        return Batch(prepare_images(self.prepare, self.train_images), self.train_labels[:, None])

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        idx = torch.randint(len(self.train_labels), (batch_size,), generator=generator)
        x = self.train_images[idx].float() / 255  # (B, C, H, W) in [0, 1]
        if self.augment_train:
            x = augment(x, generator)
        return Batch(self.prepare(x), self.train_labels[idx][:, None])
