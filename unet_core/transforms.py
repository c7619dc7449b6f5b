"""Paired transforms: identical geometry for image (HxWxC uint8, uint16 or float32) and mask
(HxW uint8).

Every transform is ``t(image, mask, rng) -> (image, mask)`` with an explicit
``np.random.Generator``, so a seed fixes the augmentation. Masks are only ever resized with
nearest-neighbour and padded with IGNORE_INDEX; colour changes touch the image only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from unet_core.augmentations import (
    ColorBalance,
    GaussianNoise,
    RandomGamma,
    RandomWarp,
    as_dtype_of,
    value_floor,
)
from unet_core.config import IGNORE_INDEX, PreprocessConfig, TrainConfig

Arrays = tuple[np.ndarray, np.ndarray]
Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator], Arrays]

__all__ = [
    "CenterCrop",
    "ColorJitter",
    "Compose",
    "collate_pairs",
    "GaussianNoise",
    "PadTo",
    "RandomCrop",
    "RandomFlip",
    "RandomGamma",
    "RandomRotate90",
    "RandomWarp",
    "Resize",
    "eval_transforms",
    "normalize_batch",
    "to_tensors",
    "transforms_for_training",
]


def _size2(size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) from an int or a (height, width) pair; both >= 1."""
    h, w = (size, size) if isinstance(size, (int, np.integer)) else size
    if int(h) < 1 or int(w) < 1:
        raise ValueError(f"size must be positive (height, width), got {size!r}")
    return int(h), int(w)


def _probability(p: float, name: str) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} is a probability in [0, 1], got {p}")
    return float(p)


def _pad(
    image: np.ndarray,
    mask: np.ndarray,
    top: int,
    bottom: int,
    left: int,
    right: int,
    pad_value: int,
    mask_pad: int,
) -> Arrays:
    image = np.pad(image, ((top, bottom), (left, right), (0, 0)), constant_values=pad_value)
    mask = np.pad(mask, ((top, bottom), (left, right)), constant_values=mask_pad)
    return image, mask


class Compose:
    """Apply transforms in order; checks that image and mask agree in size first."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Arrays:
        if image.ndim != 3 or mask.ndim != 2 or image.shape[:2] != mask.shape:
            raise ValueError(
                f"image {image.shape} and mask {mask.shape} do not match: expected HxWxC and "
                "HxW of the same height and width (is the mask paired with the right image?)"
            )
        for t in self.transforms:
            image, mask = t(image, mask, rng)
        return image, mask

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class Resize:
    """Resize to (height, width): bilinear or area (box) for the image, nearest for the mask."""

    _RESAMPLE = {"bilinear": Image.BILINEAR, "area": Image.BOX}

    def __init__(self, size: int | Sequence[int], image_interp: str = "bilinear") -> None:
        self.size = _size2(size)
        if image_interp not in self._RESAMPLE:
            raise ValueError(f"image_interp must be 'bilinear' or 'area', got {image_interp!r}")
        self.image_interp = image_interp

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Arrays:
        h, w = self.size
        if image.shape[:2] == (h, w):
            return image, mask
        resample = self._RESAMPLE[self.image_interp]
        if image.dtype != np.uint8:  # 16-bit and float: one PIL "F" image per channel
            out = np.stack(
                [
                    np.asarray(
                        Image.fromarray(image[:, :, c].astype(np.float32)).resize((w, h), resample)
                    )
                    for c in range(image.shape[2])
                ],
                axis=2,
            )
            out = as_dtype_of(out, image.dtype)
        elif image.shape[2] == 3:
            out = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((w, h), resample))
        else:  # one PIL "L" image per channel
            out = np.stack(
                [
                    np.asarray(Image.fromarray(image[:, :, c]).resize((w, h), resample))
                    for c in range(image.shape[2])
                ],
                axis=2,
            )
        out_mask = np.asarray(Image.fromarray(mask).resize((w, h), Image.NEAREST))
        return out, out_mask

    def __repr__(self) -> str:
        return f"Resize({self.size}, {self.image_interp!r})"


class PadTo:
    """Pad bottom/right to at least (height, width): image with ``pad_value``, mask with
    ``mask_pad`` (IGNORE_INDEX: padding counts in no loss or metric)."""

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
        return _pad(image, mask, 0, ph, 0, pw, self.pad_value, self.mask_pad)


class RandomCrop:
    """A random (height, width) window. A smaller input is padded at a random offset first
    (image with ``pad_value``, mask with ``mask_pad``).

    ``context`` > 0: the window grows by that many pixels on every side (padded where it leaves
    the image), its centre placed as that of a plain crop; a warp then reads the margin and cuts
    the central (height, width) out (`unet_core.augmentations.RandomWarp`).
    """

    def __init__(
        self,
        size: int | Sequence[int],
        pad_value: int = 0,
        mask_pad: int = IGNORE_INDEX,
        *,
        context: int = 0,
    ) -> None:
        self.size = _size2(size)
        self.pad_value = pad_value
        self.mask_pad = mask_pad
        if context < 0:
            raise ValueError(f"context must be >= 0 pixels, got {context}")
        self.context = int(context)

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Arrays:
        ch, cw = self.size
        h, w = image.shape[:2]
        if self.context:
            return self._with_context(image, mask, rng)
        ph, pw = max(0, ch - h), max(0, cw - w)
        if ph or pw:
            top, left = int(rng.integers(0, ph + 1)), int(rng.integers(0, pw + 1))
            image, mask = _pad(
                image, mask, top, ph - top, left, pw - left, self.pad_value, self.mask_pad
            )
            h, w = image.shape[:2]
        top = int(rng.integers(0, h - ch + 1))
        left = int(rng.integers(0, w - cw + 1))
        return image[top : top + ch, left : left + cw], mask[top : top + ch, left : left + cw]

    def _with_context(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> Arrays:
        (ch, cw), m = self.size, self.context
        h, w = image.shape[:2]
        # Top-left of the inner window: where a plain crop (padding a small input) may put it.
        top = int(rng.integers(min(0, h - ch), max(0, h - ch) + 1)) - m
        left = int(rng.integers(min(0, w - cw), max(0, w - cw) + 1)) - m
        wh, ww = ch + 2 * m, cw + 2 * m
        y0, y1, x0, x1 = max(top, 0), min(top + wh, h), max(left, 0), min(left + ww, w)
        pads = (y0 - top, top + wh - y1, x0 - left, left + ww - x1)
        return _pad(image[y0:y1, x0:x1], mask[y0:y1, x0:x1], *pads, self.pad_value, self.mask_pad)

    def __repr__(self) -> str:
        extra = f", context={self.context}" if self.context else ""
        return f"RandomCrop({self.size}{extra})"


class CenterCrop:
    """The central (height, width) window; smaller inputs are padded bottom/right first."""

    def __init__(
        self, size: int | Sequence[int], pad_value: int = 0, mask_pad: int = IGNORE_INDEX
    ) -> None:
        self.size = _size2(size)
        self.pad = PadTo(size, pad_value, mask_pad)

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Arrays:
        image, mask = self.pad(image, mask, rng)
        h, w = image.shape[:2]
        ch, cw = self.size
        top, left = (h - ch) // 2, (w - cw) // 2
        return image[top : top + ch, left : left + cw], mask[top : top + ch, left : left + cw]

    def __repr__(self) -> str:
        return f"CenterCrop({self.size})"


class RandomFlip:
    """Mirror left-right with probability ``horizontal``, up-down with ``vertical``."""

    def __init__(self, horizontal: float = 0.5, vertical: float = 0.0) -> None:
        self.horizontal = _probability(horizontal, "horizontal")
        self.vertical = _probability(vertical, "vertical")

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Arrays:
        flip_h, flip_v = rng.random(2) < (self.horizontal, self.vertical)
        if flip_h:
            image, mask = image[:, ::-1], mask[:, ::-1]
        if flip_v:
            image, mask = image[::-1], mask[::-1]
        return image, mask

    def __repr__(self) -> str:
        return f"RandomFlip(horizontal={self.horizontal}, vertical={self.vertical})"


class RandomRotate90:
    """With probability ``p``, rotate by 90, 180 or 270 degrees (uniform)."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = _probability(p, "p")

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Arrays:
        if rng.random() < self.p:
            k = int(rng.integers(1, 4))
            image, mask = np.rot90(image, k, axes=(0, 1)), np.rot90(mask, k, axes=(0, 1))
        return image, mask

    def __repr__(self) -> str:
        return f"RandomRotate90(p={self.p})"


class ColorJitter:
    """Random brightness and contrast factors in [1 - x, 1 + x] (image only).

    brightness scales the pixels (16-bit and float images: their distance to the image's own
    minimum, `value_floor`); contrast then scales their distance to the image mean. A 16-bit
    or float image changes in its own values and keeps its type.
    """

    def __init__(self, brightness: float = 0.2, contrast: float = 0.2) -> None:
        if not (0.0 <= brightness < 1.0 and 0.0 <= contrast < 1.0):
            raise ValueError(
                f"brightness and contrast must be in [0, 1), got {brightness} and {contrast}"
            )
        self.brightness = float(brightness)
        self.contrast = float(contrast)

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Arrays:
        b = 1.0 + rng.uniform(-self.brightness, self.brightness)
        c = 1.0 + rng.uniform(-self.contrast, self.contrast)
        floor = value_floor(image)  # 0 for 8-bit images
        x = image.astype(np.float32) * b if not floor else (image - floor) * np.float32(b) + floor
        mean = x.mean()
        x = (x - mean) * c + mean
        return as_dtype_of(x, image.dtype), mask

    def __repr__(self) -> str:
        return f"ColorJitter(brightness={self.brightness}, contrast={self.contrast})"


def transforms_for_training(cfg: TrainConfig, *, rgb: bool = True) -> Compose:
    """The training pipeline of a TrainConfig; the single-process `fit` and the Ray Train workers
    both use it. In order: a random crop of ``crop_size`` (0: whole images), the warp (scale,
    rotation, elastic), flips, 90-degree rotations, brightness/contrast, colour balance and
    saturation, gamma, noise; each step only when its field turns it on, and none without
    ``augment``. The defaults give crop, flips (0.5 each way), RandomRotate90(0.5) and
    ColorJitter(0.2, 0.2). Colour balance and saturation assume red, green and blue: with
    ``rgb`` False (grayscale, named bands: `unet_core.config.Preprocessing.is_rgb`) they are
    left out. Intensity steps act on the pixels before normalisation, in the data's own range
    (8-bit: 0..255; 16-bit and float: each image's min..max)."""
    crop = cfg.crop_size
    if not cfg.augment:
        return Compose([RandomCrop(crop)] if crop else [])
    warp = RandomWarp(
        (crop, crop) if crop else None,
        scale=(cfg.scale_min, cfg.scale_max),
        degrees=cfg.rotate_degrees,
        affine_p=cfg.affine,
        elastic_p=cfg.elastic,
        elastic_sigma=cfg.elastic_sigma,
        elastic_grid=cfg.elastic_grid,
    )
    warps = warp.has_affine or warp.has_elastic
    steps: list[Transform] = []
    if crop:
        steps.append(RandomCrop(crop, context=warp.context(crop) if warps else 0))
    if warps:
        steps.append(warp)
    if cfg.hflip or cfg.vflip:
        steps.append(RandomFlip(horizontal=cfg.hflip, vertical=cfg.vflip))
    if cfg.rotate90:
        steps.append(RandomRotate90(p=cfg.rotate90))
    if cfg.brightness or cfg.contrast:
        steps.append(ColorJitter(cfg.brightness, cfg.contrast))
    if rgb and (cfg.channel_gain or cfg.saturation):
        steps.append(ColorBalance(cfg.channel_gain, cfg.saturation))
    if cfg.gamma:
        steps.append(RandomGamma(cfg.gamma))
    if cfg.noise_std:
        steps.append(GaussianNoise(cfg.noise_std))
    return Compose(steps)


def eval_transforms(crop_size: int | None = None) -> Compose:
    """Identity for whole-image evaluation, or a deterministic center crop (padded if smaller)."""
    return Compose([CenterCrop(crop_size)] if crop_size else [])


def to_tensors(
    image: np.ndarray, mask: np.ndarray, preprocess: PreprocessConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, H, W) float32 normalised image and (H, W) int64 class indices."""
    x = torch.from_numpy(preprocess.normalize(np.ascontiguousarray(image)))
    y = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64))
    return x, y


def normalize_batch(images: torch.Tensor, preprocess: PreprocessConfig) -> torch.Tensor:
    """(B, H, W, C) uint8, uint16 or float32 on any device -> (B, C, H, W) float32 normalised,
    on that device.

    The arithmetic of `PreprocessConfig.normalize` (clip, then shift and scale); the result is
    an NCHW view with channels-last strides, the layout the model runs in.
    """

    def per_channel(values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(values).to(images.device).view(1, -1, 1, 1)

    shift, scale = (per_channel(v) for v in preprocess.shift_scale())
    x = images.permute(0, 3, 1, 2).float()  # (B, C, H, W)
    bounds = preprocess.clip_bounds()
    if bounds is not None:  # non-finite float pixels count as 0 before the clip (as NumPy's)
        low, high = (per_channel(v) for v in bounds)
        x = torch.clamp(torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0), low, high)
    return (x - shift) * scale


def collate_pairs(
    pairs: Sequence[Arrays], preprocess: PreprocessConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augmented (image, mask) pairs -> one batch: padded to the largest size in the batch
    (image 0, mask IGNORE_INDEX, which no loss or metric counts) and normalised:
    (B, C, H, W) float32 and (B, H, W) int64."""
    h = max(mask.shape[0] for _, mask in pairs)
    w = max(mask.shape[1] for _, mask in pairs)
    c = pairs[0][0].shape[2]
    x = np.zeros((len(pairs), h, w, c), dtype=pairs[0][0].dtype)  # uint8, uint16 or float32
    y = np.full((len(pairs), h, w), IGNORE_INDEX, dtype=np.uint8)
    for i, (image, mask) in enumerate(pairs):
        x[i, : image.shape[0], : image.shape[1]] = image
        y[i, : mask.shape[0], : mask.shape[1]] = mask
    return normalize_batch(torch.from_numpy(x), preprocess), torch.from_numpy(y).long()
