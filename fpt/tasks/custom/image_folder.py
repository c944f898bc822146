"""Format `image_folder`: one subfolder per class (or train/ val/ test/ folders of class subfolders); images
resized to image_size, cut into patch_size x patch_size patches. Class names in sorted order."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fpt.datasets.readers import where
from fpt.core.errors import FPTError
from fpt.tasks.base import Batch, TaskData, TaskSpec, patchify_images
from fpt.tasks.custom.taskfile import FORMATS, IMAGE_SUFFIXES
from fpt.tasks.image_data import ImageData, prepare_images


class ImageFolderFormat:
    """Mixed into CustomTask: `self` is the task."""

    name, kind, default_patch_size = "image_folder", "a folder of images or an image", 4

    @staticmethod
    def fits(path: Path) -> bool:
        return path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES

    def read_splits(self) -> dict:
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

    def read_input_arrays(self, path: Path) -> tuple[dict, list]:
        x, y, names = self._read_images(path, None, unlabelled=True)
        return {"x": x, "y": y}, names

    def read_value_arrays(self, values) -> dict:
        x = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
        size, channels = self._image_settings()
        if x.ndim != 4 or not len(x) or x.dtype != np.uint8 or x.shape[1:] != (channels, size, size):
            raise FPTError(f"images must be uint8 (N, {channels}, {size}, {size}), got {x.dtype} {x.shape}")
        return {"x": x, "y": np.full(len(x), -1)}

    def image_data(self, s: dict) -> TaskData:
        """Split name -> uint8 images as TaskData (checked after normalisation, by TaskData.validate)."""
        images = {n: (torch.from_numpy(v["x"]), torch.from_numpy(v["y"])) for n, v in s.items()}
        if "train" in images:
            return ImageData(self.spec, images, self._prepare_images, augment_train=False)
        return TaskData(self.spec, {n: Batch(prepare_images(self._prepare_images, x), y[:, None])
                                    for n, (x, y) in images.items()})


FORMATS.register("image_folder", ImageFolderFormat)
