"""Paired transforms: identical geometry for image (HxWxC uint8) and mask (HxW uint8).

Every transform takes an explicit ``np.random.Generator``, so a seed fixes the augmentation.
Masks are only ever resized with nearest-neighbour and padded with IGNORE_INDEX.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from unet_core.config import IGNORE_INDEX, PreprocessConfig

Arrays = tuple[np.ndarray, np.ndarray]


def _size2(size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) from an int or a pair."""
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


class Compose:
    def __init__(self, transforms: Sequence) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Arrays:
        for t in self.transforms:
            image, mask = t(image, mask, rng)
        return image, mask


class Resize:
    """Resize to (height, width): bilinear or area (box) for the image, nearest for the mask."""

    def __init__(self, size: int | Sequence[int], image_interp: str = "bilinear") -> None:
        self.size = _size2(size)
        resample = {"bilinear": Image.BILINEAR, "area": Image.BOX}
        if image_interp not in resample:
            raise ValueError(f"image_interp must be 'bilinear' or 'area', got {image_interp!r}")
        self.resample = resample[image_interp]

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Arrays:
        h, w = self.size
        if image.shape[:2] == (h, w):
            return image, mask
        channels = [
            np.asarray(Image.fromarray(image[:, :, c]).resize((w, h), self.resample))
            for c in range(image.shape[2])
        ]
        out_mask = np.asarray(Image.fromarray(mask).resize((w, h), Image.NEAREST))
        return np.stack(channels, axis=2), out_mask


class PadTo:
    """Pad bottom/right to at least (height, width): image with 0, mask with IGNORE_INDEX."""

    def __init__(
        self, size: int | Sequence[int], pad_value: int = 0, mask_pad: int = IGNORE_INDEX
    ) -> None:
        self.size = _size2(size)
        self.pad_value = pad_value
        self.mask_pad = mask_pad

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Arrays:
        h, w = image.shape[:2]
        ph, pw = max(0, self.size[0] - h), max(0, self.size[1] - w)
        if not ph and not pw:
            return image, mask
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)), constant_values=self.pad_value)
        mask = np.pad(mask, ((0, ph), (0, pw)), constant_values=self.mask_pad)
        return image, mask


class RandomCrop:
    """A random (height, width) window; smaller inputs are padded first."""

    def __init__(
        self, size: int | Sequence[int], pad_value: int = 0, mask_pad: int = IGNORE_INDEX
    ) -> None:
        self.size = _size2(size)
        self.pad = PadTo(size, pad_value, mask_pad)

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Arrays:
        image, mask = self.pad(image, mask, rng)
        h, w = image.shape[:2]
        ch, cw = self.size
        top = int(rng.integers(0, h - ch + 1))
        left = int(rng.integers(0, w - cw + 1))
        return image[top : top + ch, left : left + cw], mask[top : top + ch, left : left + cw]


class CenterCrop:
    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = _size2(size)
        self.pad = PadTo(size)

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Arrays:
        image, mask = self.pad(image, mask, rng)
        h, w = image.shape[:2]
        ch, cw = self.size
        top, left = (h - ch) // 2, (w - cw) // 2
        return image[top : top + ch, left : left + cw], mask[top : top + ch, left : left + cw]


class RandomFlip:
    def __init__(self, horizontal: float = 0.5, vertical: float = 0.0) -> None:
        self.horizontal = horizontal
        self.vertical = vertical

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Arrays:
        if rng.random() < self.horizontal:
            image, mask = image[:, ::-1], mask[:, ::-1]
        if rng.random() < self.vertical:
            image, mask = image[::-1], mask[::-1]
        return image, mask


class RandomRotate90:
    """Rotate by k * 90 degrees (k uniform in 0..3) with probability p."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Arrays:
        if rng.random() < self.p:
            k = int(rng.integers(1, 4))
            image, mask = np.rot90(image, k, axes=(0, 1)), np.rot90(mask, k, axes=(0, 1))
        return image, mask


class ColorJitter:
    """Random brightness and contrast (image only)."""

    def __init__(self, brightness: float = 0.2, contrast: float = 0.2) -> None:
        self.brightness = brightness
        self.contrast = contrast

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Arrays:
        b = 1.0 + rng.uniform(-self.brightness, self.brightness)
        c = 1.0 + rng.uniform(-self.contrast, self.contrast)
        x = image.astype(np.float32)
        mean = x.mean()
        x = (x - mean) * c + mean * b
        return np.clip(x + 0.5, 0, 255).astype(np.uint8), mask


def train_transforms(
    crop_size: int | None, *, flips: bool = True, rotate90: bool = True, jitter: bool = True
) -> Compose:
    steps: list = []
    if crop_size:
        steps.append(RandomCrop(crop_size))
    if flips:
        steps.append(RandomFlip(horizontal=0.5, vertical=0.5))
    if rotate90:
        steps.append(RandomRotate90(p=0.5))
    if jitter:
        steps.append(ColorJitter())
    return Compose(steps)


def eval_transforms(crop_size: int | None = None) -> Compose:
    """Identity for whole-image evaluation, or a deterministic center crop."""
    return Compose([CenterCrop(crop_size)] if crop_size else [])


def to_tensors(
    image: np.ndarray, mask: np.ndarray, preprocess: PreprocessConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, H, W) float32 normalised image and (H, W) int64 class indices."""
    x = torch.from_numpy(preprocess.normalize(np.ascontiguousarray(image)))
    y = torch.from_numpy(np.ascontiguousarray(mask).astype(np.int64))
    return x, y
