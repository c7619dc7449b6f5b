"""Augmentations on images beyond 8-bit RGB: 16-bit and float pixels keep their type and
range; colour balance and saturation only for RGB."""

from __future__ import annotations

import numpy as np
import pytest

from unet_core.augmentations import ColorBalance, GaussianNoise, RandomGamma, RandomWarp
from unet_core.config import TrainConfig
from unet_core.transforms import ColorJitter, Resize, transforms_for_training

RNG = np.random.default_rng(0)
MASK = np.zeros((24, 24), np.uint8)
TWELVE_BIT = RNG.integers(2000, 3000, size=(24, 24, 1), dtype=np.uint16)
FLOAT = RNG.normal(-3.0, 0.01, size=(24, 24, 4)).astype(np.float32)


def _steps(cfg: TrainConfig, rgb: bool) -> list[str]:
    return [type(t).__name__ for t in transforms_for_training(cfg, rgb=rgb).transforms]


def test_colour_balance_and_saturation_only_for_rgb():
    cfg = TrainConfig(channel_gain=0.1, saturation=0.3, gamma=0.2, noise_std=3.0)
    assert "ColorBalance" in _steps(cfg, rgb=True)
    bands = _steps(cfg, rgb=False)
    assert "ColorBalance" not in bands and {"ColorJitter", "RandomGamma", "GaussianNoise"} <= set(
        bands
    )


@pytest.mark.parametrize(
    "step",
    [
        ColorJitter(0.2, 0.2),
        RandomGamma(0.5),
        GaussianNoise(5.0),
        RandomWarp(scale=(0.8, 1.2), degrees=20, elastic_p=1.0),
        ColorBalance(0.1, 0.3),
    ],
    ids=lambda s: type(s).__name__,
)
@pytest.mark.parametrize("image", [TWELVE_BIT, FLOAT], ids=["uint16-12bit", "float32"])
def test_intensity_steps_keep_type_and_act_in_the_data_range(step, image):
    out, _ = step(image.copy(), MASK, np.random.default_rng(3))
    assert out.dtype == image.dtype and out.shape == image.shape
    span = float(image.max() - image.min())
    if not isinstance(step, RandomWarp):  # a warp fills what it brings in with 0
        # changed within the image's own range, not clipped to 0..255 nor lost in rounding
        assert float(np.abs(out.astype(np.float64) - image).max()) < 3 * span
    if not isinstance(step, ColorBalance) or image.shape[2] > 1:
        assert not np.array_equal(out, image)
    if image.dtype == np.uint16:
        assert out.max() > 255


def test_noise_scales_with_the_image_range():
    noisy, _ = GaussianNoise(25.5)(FLOAT, MASK, np.random.default_rng(0))
    # std 25.5 of 0..255 is a tenth of the range: here a tenth of max - min
    ratio = (noisy - FLOAT).std() / float(FLOAT.max() - FLOAT.min())
    assert 0.07 < ratio < 0.13


def test_uint8_steps_unchanged_by_the_wider_types():
    image = RNG.integers(0, 256, size=(24, 24, 3), dtype=np.uint8)
    out, _ = GaussianNoise(5.0)(image, MASK, np.random.default_rng(1))
    noise = np.random.default_rng(1)
    noise.random()
    want = np.clip(
        np.rint(image.astype(np.float32) + noise.standard_normal(image.shape, np.float32) * 5),
        0,
        255,
    ).astype(np.uint8)
    np.testing.assert_array_equal(out, want)


def test_resize_keeps_sixteen_bit_values():
    out, mask = Resize((12, 12), "area")(TWELVE_BIT, MASK, RNG)
    assert out.dtype == np.uint16 and out.shape == (12, 12, 1) and mask.shape == (12, 12)
    want = TWELVE_BIT[:, :, 0].astype(np.float64).reshape(12, 2, 12, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(out[:, :, 0], want, atol=1.0)
