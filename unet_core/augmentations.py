"""Warps and photometric changes for training: elastic deformation, scale and rotation by any
angle, colour balance and saturation, gamma and Gaussian noise. Paired and seeded like `unet_core.transforms`:
``t(image, mask, rng) -> (image, mask)``, every random number drawn from ``rng``.

`RandomWarp` resamples the image once (bilinear) and the mask once (nearest neighbour, so no class
is ever blended), however many of its parts fire: the affine map and the elastic field are
composed into one sampling grid. Pixels that come from outside the input are 0 in the image and
IGNORE_INDEX in the mask, so no loss or metric counts them. Given ``size``, the warp produces only
the central ``size`` window of its input: `unet_core.transforms.RandomCrop` with ``context`` hands
it a larger window, so that the corners a rotation or a displacement reaches are real pixels.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from unet_core.config import IGNORE_INDEX

Arrays = tuple[np.ndarray, np.ndarray]

__all__ = [
    "ColorBalance",
    "GaussianNoise",
    "RandomGamma",
    "RandomWarp",
    "as_dtype_of",
    "value_range",
]

ELASTIC_REACH = 3.0
"""Displacements are treated as reaching at most this many sigmas (for the context margin)."""


def _check_probability(p: float, name: str) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} is a probability in [0, 1], got {p}")
    return float(p)


def _as_hwc(image: np.ndarray) -> np.ndarray:
    return image[:, :, None] if image.ndim == 2 else image


_INTEGER_TOP = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def as_dtype_of(x: np.ndarray | torch.Tensor, dtype: np.dtype) -> np.ndarray:
    """Float pixels back to the image's own type: integers rounded and clipped to their range
    (uint8 0..255, uint16 0..65535), float32 as they are."""
    top = _INTEGER_TOP.get(np.dtype(dtype))
    if isinstance(x, torch.Tensor):
        x = x.numpy()
    if top is None:
        return x.astype(np.float32, copy=False)
    return np.clip(np.rint(x), 0, top).astype(dtype)


def value_floor(image: np.ndarray) -> np.float32:
    """What gains scale from: 0 for 8-bit images, the image's own minimum for 16-bit and float
    data (whose offset, a camera's dark level or a negative signal, is not brightness)."""
    if image.dtype == np.uint8:
        return np.float32(0.0)
    finite = image[np.isfinite(image)] if image.dtype.kind == "f" else image
    return np.float32(finite.min()) if finite.size else np.float32(0.0)


def value_range(image: np.ndarray) -> float:
    """The span that intensity changes are measured against: 255 for 8-bit images (0..255),
    else the image's own max - min (16-bit and float data: their own range; 1 when flat)."""
    if image.dtype == np.uint8:
        return 255.0
    finite = image[np.isfinite(image)] if image.dtype.kind == "f" else image
    span = float(finite.max() - finite.min()) if finite.size else 0.0
    return span if span > 0 else 1.0


class RandomWarp:
    """Random scale and rotation (one affine about the centre) and elastic deformation.

    - affine, with probability ``affine_p``: scale uniform in ``scale`` (> 1 zooms in), angle
      uniform in [-degrees, degrees];
    - elastic, with probability ``elastic_p`` (the U-Net paper): a displacement drawn from
      N(0, ``elastic_sigma``) pixels per axis at each point of an ``elastic_grid`` x
      ``elastic_grid`` coarse grid spanning the output, bicubically interpolated to every pixel.

    ``size`` (height, width): the output is the central window of that size (the input must be
    at least as large); None keeps the input size. When neither part fires the window is cut out
    unchanged (no resampling).
    """

    def __init__(
        self,
        size: int | Sequence[int] | None = None,
        *,
        scale: tuple[float, float] = (1.0, 1.0),
        degrees: float = 0.0,
        affine_p: float = 1.0,
        elastic_p: float = 0.0,
        elastic_sigma: float = 10.0,
        elastic_grid: int = 3,
    ) -> None:
        if size is None:
            self.size = None
        else:
            h, w = (size, size) if isinstance(size, (int, np.integer)) else size
            if int(h) < 1 or int(w) < 1:
                raise ValueError(f"size must be positive (height, width), got {size!r}")
            self.size = (int(h), int(w))
        lo, hi = float(scale[0]), float(scale[1])
        if not 0.0 < lo <= hi:
            raise ValueError(f"scale must be a range 0 < min <= max, got ({lo}, {hi})")
        if not 0.0 <= degrees <= 180.0:
            raise ValueError(f"degrees must be in [0, 180], got {degrees}")
        if elastic_sigma < 0:
            raise ValueError(f"elastic_sigma must be >= 0 pixels, got {elastic_sigma}")
        if elastic_grid < 2:
            raise ValueError(
                f"elastic_grid must be >= 2 control points per side, got {elastic_grid}"
            )
        self.scale = (lo, hi)
        self.degrees = float(degrees)
        self.affine_p = _check_probability(affine_p, "affine_p")
        self.elastic_p = _check_probability(elastic_p, "elastic_p")
        self.elastic_sigma = float(elastic_sigma)
        self.elastic_grid = int(elastic_grid)

    @property
    def has_affine(self) -> bool:
        return self.affine_p > 0 and (self.scale != (1.0, 1.0) or self.degrees > 0)

    @property
    def has_elastic(self) -> bool:
        return self.elastic_p > 0 and self.elastic_sigma > 0

    def context(self, crop: int) -> int:
        """Margin (pixels per side) around a ``crop`` x ``crop`` output that the warp may read:
        enough for the largest rotation, the smallest scale and displacements of up to
        ELASTIC_REACH sigmas."""
        half = crop / 2 + (ELASTIC_REACH * self.elastic_sigma if self.has_elastic else 0.0)
        if self.has_affine:
            theta = math.radians(min(self.degrees, 45.0))  # |cos| + |sin| peaks at 45 degrees
            half *= (math.cos(theta) + math.sin(theta)) / min(self.scale[0], 1.0)
        return max(0, math.ceil(half - crop / 2))

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Arrays:
        h, w = mask.shape
        oh, ow = self.size or (h, w)
        if oh > h or ow > w:
            raise ValueError(
                f"RandomWarp output {oh}x{ow} is larger than its input {h}x{w}; crop with "
                "RandomCrop(size, context=warp.context(size)) first"
            )
        affine = self.has_affine and rng.random() < self.affine_p
        if affine:
            s = rng.uniform(*self.scale)
            angle = math.radians(rng.uniform(-self.degrees, self.degrees))
        elastic = self.has_elastic and rng.random() < self.elastic_p
        if elastic:
            g = self.elastic_grid
            coarse = rng.normal(0.0, self.elastic_sigma, (2, g, g)).astype(np.float32)
        top, left = (h - oh) // 2, (w - ow) // 2
        if not affine and not elastic:
            return image[top : top + oh, left : left + ow], mask[top : top + oh, left : left + ow]

        # Output pixel (y, x) relative to the output centre; pixel centres at integers.
        ys = torch.arange(oh, dtype=torch.float32) - (oh - 1) / 2
        xs = torch.arange(ow, dtype=torch.float32) - (ow - 1) / 2
        y, x = torch.meshgrid(ys, xs, indexing="ij")  # (oh, ow) each
        if elastic:  # bicubic is separable: (oh, g) @ (g, g) @ (g, ow) per axis of displacement
            field = _cubic(oh, g).T @ torch.from_numpy(coarse) @ _cubic(ow, g)  # (2, oh, ow)
            y, x = y + field[0], x + field[1]  # dy, dx in output pixels
        if affine:  # source = R(angle) @ output / s
            c, sn = math.cos(angle) / s, math.sin(angle) / s
            y, x = c * y + sn * x, -sn * y + c * x
        # Back to input pixels, then to grid_sample's [-1, 1] (align_corners=False).
        y = (y + (h - 1) / 2) * (2.0 / h) + (1.0 / h - 1.0)
        x = (x + (w - 1) / 2) * (2.0 / w) + (1.0 / w - 1.0)
        grid = torch.stack((x, y), dim=-1)[None]  # (1, oh, ow, 2), x first
        return _sample(image, mask, grid)

    def __repr__(self) -> str:
        return (
            f"RandomWarp(size={self.size}, scale={self.scale}, degrees={self.degrees}, "
            f"affine_p={self.affine_p}, elastic_p={self.elastic_p}, "
            f"elastic_sigma={self.elastic_sigma}, elastic_grid={self.elastic_grid})"
        )


@functools.lru_cache(maxsize=16)
def _cubic(n: int, g: int) -> torch.Tensor:
    """(g, n) weights of bicubic interpolation (align_corners) from g control points to n pixels:
    row i is the interpolation of the i-th unit vector, as `F.interpolate` computes it."""
    eye = torch.eye(g).view(1, g, g, 1)  # (1, C=g, H=g, W=1): channel i holds e_i
    return F.interpolate(eye, size=(n, 1), mode="bicubic", align_corners=True)[0, :, :, 0]


def _sample(image: np.ndarray, mask: np.ndarray, grid: torch.Tensor) -> Arrays:
    """Image bilinear with 0 outside; mask nearest with IGNORE_INDEX outside."""
    img = torch.from_numpy(np.ascontiguousarray(_as_hwc(image))).permute(2, 0, 1)[None].float()
    out = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if image.dtype == np.uint8:
        out_img = out[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8).numpy()
    else:  # 16-bit and float images keep their type and values
        out_img = as_dtype_of(out[0].permute(1, 2, 0), image.dtype)  # (oh, ow, C)
    # Shift classes by one so that the zero padding marks "outside" unambiguously.
    m = torch.from_numpy(mask.astype(np.float32) + 1.0)[None, None]  # (1, 1, h, w)
    sampled = F.grid_sample(m, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    sampled = sampled[0, 0].numpy()
    out_mask = np.where(sampled > 0, sampled - 1.0, IGNORE_INDEX).astype(mask.dtype)
    return (out_img[:, :, 0] if image.ndim == 2 else out_img), out_mask


class RandomGamma:
    """Gamma correction (image only): ``255 * (x / 255) ** g`` with g log-uniform in
    [1 / (1 + gamma), 1 + gamma], with probability ``p``. A 16-bit or float image is mapped
    the same way over its own min..max instead of 0..255."""

    def __init__(self, gamma: float = 0.2, p: float = 1.0) -> None:
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0 (0 = off), got {gamma}")
        self.gamma = float(gamma)
        self.p = _check_probability(p, "p")

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Arrays:
        if rng.random() >= self.p:
            return image, mask
        g = (1.0 + self.gamma) ** rng.uniform(-1.0, 1.0)
        if image.dtype == np.uint8:
            lut = np.rint(255.0 * (np.arange(256) / 255.0) ** g).astype(np.uint8)
            return lut[image], mask
        x = image.astype(np.float32)
        low, span = np.float32(np.nanmin(x)), np.float32(value_range(image))
        x = low + span * np.clip((x - low) / span, 0.0, None) ** np.float32(g)
        return as_dtype_of(x, image.dtype), mask

    def __repr__(self) -> str:
        return f"RandomGamma(gamma={self.gamma}, p={self.p})"


class ColorBalance:
    """Colour changes of the light and the camera (image only; RGB or any multi-channel image):
    each channel scaled (from `value_floor`) by its own factor in [1 - gain, 1 + gain] (white balance, the tint of dusk
    or artificial light), then the distance of each pixel to its grey (channel mean) scaled by a
    factor in [1 - saturation, 1 + saturation]. A 1-channel image passes unchanged; the training
    pipeline uses it for RGB images only (`unet_core.transforms.transforms_for_training`)."""

    def __init__(self, gain: float = 0.1, saturation: float = 0.3) -> None:
        if not (0.0 <= gain < 1.0 and 0.0 <= saturation < 1.0):
            raise ValueError(
                f"channel_gain and saturation must be in [0, 1), got {gain} and {saturation}"
            )
        self.gain = float(gain)
        self.saturation = float(saturation)

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Arrays:
        if image.ndim == 2 or image.shape[2] == 1:
            return image, mask
        gains = 1.0 + rng.uniform(-self.gain, self.gain, size=image.shape[2])
        s = 1.0 + rng.uniform(-self.saturation, self.saturation)
        floor = value_floor(image)
        x = (image.astype(np.float32) - floor) * gains.astype(np.float32) + floor
        grey = x.mean(axis=2, keepdims=True)
        x = (x - grey) * np.float32(s) + grey
        return as_dtype_of(x, image.dtype), mask

    def __repr__(self) -> str:
        return f"ColorBalance(gain={self.gain}, saturation={self.saturation})"


class GaussianNoise:
    """Additive N(0, std) noise in pixel values (0..255), clipped to uint8 (image only), with
    probability ``p``. A 16-bit or float image gets the same share of its own range
    (std / 255 x its max - min), kept in its type."""

    def __init__(self, std: float = 5.0, p: float = 1.0) -> None:
        if std < 0:
            raise ValueError(f"std must be >= 0 pixel values (0 = off), got {std}")
        self.std = float(std)
        self.p = _check_probability(p, "p")

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Arrays:
        if rng.random() >= self.p:
            return image, mask
        std = np.float32(self.std * value_range(image) / 255.0)
        noise = rng.standard_normal(image.shape, dtype=np.float32) * std
        return as_dtype_of(image.astype(np.float32) + noise, image.dtype), mask

    def __repr__(self) -> str:
        return f"GaussianNoise(std={self.std}, p={self.p})"
