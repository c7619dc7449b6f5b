import numpy as np
import pytest
from PIL import Image

from unet_core.config import IGNORE_INDEX
from unet_core.viz import (
    colorize_mask,
    legend,
    overlay,
    panel,
    save_png,
    stack_panels,
)

COLORS = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]], dtype=np.uint8)
MASK = np.array([[0, 1], [2, IGNORE_INDEX]], dtype=np.uint8)


def test_colorize_mask_colours_known_pixels():
    rgb = colorize_mask(MASK, COLORS)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert [tuple(p) for p in rgb.reshape(-1, 3)] == [
        (0, 0, 0),
        (255, 0, 0),
        (0, 255, 0),
        (0, 0, 0),
    ]
    # int64 masks (e.g. from a tensor): unknown and out-of-range indices are black too
    wide = colorize_mask(np.array([[1, 7], [-3, 1000]]), COLORS)
    assert tuple(wide[0, 0]) == (255, 0, 0) and not wide.reshape(-1, 3)[1:].any()


def test_overlay_blends_classes_and_handles_grayscale():
    gray = np.full((2, 2), 100, dtype=np.uint8)
    out = overlay(gray, MASK, COLORS, alpha=0.5)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    assert tuple(out[0, 0]) == (100, 100, 100)  # black (background) colour: image untouched
    assert tuple(out[0, 1]) == (178, 50, 50)  # 0.5 * 100 + 0.5 * 255 rounded
    assert tuple(out[1, 0]) == (50, 178, 50)
    assert tuple(out[1, 1]) == (100, 100, 100)  # ignored
    np.testing.assert_array_equal(overlay(gray[:, :, None], MASK, COLORS, alpha=0.5), out)
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    assert tuple(overlay(rgb, MASK, COLORS, alpha=1.0)[0, 1]) == (255, 0, 0)
    with pytest.raises(ValueError, match="does not match image size"):
        overlay(np.zeros((3, 3, 3), dtype=np.uint8), MASK, COLORS)


def test_panel_layout_and_pixels():
    image = np.zeros((20, 30, 3), dtype=np.uint8)
    mask = np.ones((20, 30), dtype=np.uint8)
    three = panel(image, mask, mask, COLORS, scale=1)
    two = panel(image, mask, None, COLORS, scale=1)
    assert isinstance(three, Image.Image) and three.mode == "RGB"
    assert three.width == 3 * 30 + 2 * 4 and two.width == 2 * 30 + 4
    assert three.height == two.height > 20
    arr = np.asarray(three)
    caption = arr.shape[0] - 20
    assert tuple(arr[caption + 5, 5]) == (0, 0, 0)  # image tile
    assert tuple(arr[caption + 5, 34 + 5]) == (128, 0, 0)  # prediction overlay (alpha 0.5)
    assert (arr[:caption] < 128).any()  # the captions drew some dark text
    big = panel(image, mask, mask, COLORS)  # small tiles are upscaled by default
    assert big.width >= 3 * 128
    with_legend = panel(image, mask, None, COLORS, scale=1, class_names=["bg", "a", "b"])
    assert with_legend.height > two.height


def test_legend_and_stack():
    strip = legend(["background", "road", "car"], COLORS, width=200)
    assert strip.width == 200 and strip.height > 10
    assert (np.asarray(strip) == [255, 0, 0]).all(axis=2).any()  # the "road" swatch
    stacked = stack_panels([strip, strip], gap=4)
    assert stacked.size == (200, 2 * strip.height + 4)


def test_save_png_roundtrip(tmp_path):
    rgb = colorize_mask(MASK, COLORS)
    save_png(rgb, tmp_path / "sub" / "mask.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "sub" / "mask.png")), rgb)
    with pytest.raises(ValueError, match="uint8"):
        save_png(rgb.astype(np.float32), tmp_path / "bad.png")
