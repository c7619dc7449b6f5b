import numpy as np
from PIL import Image

from unet_core.config import IGNORE_INDEX
from unet_core.viz import colorize_mask, loss_curve_png, overlay, panel

COLORS = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]], dtype=np.uint8)


def test_colorize_and_overlay():
    mask = np.array([[0, 1], [2, IGNORE_INDEX]], dtype=np.uint8)
    rgb = colorize_mask(mask, COLORS)
    assert rgb.shape == (2, 2, 3)
    assert tuple(rgb[0, 1]) == (255, 0, 0) and tuple(rgb[1, 1]) == (0, 0, 0)
    gray = np.full((2, 2), 100, dtype=np.uint8)
    out = overlay(gray, mask, COLORS, alpha=0.5)
    assert out.shape == (2, 2, 3) and tuple(out[0, 0]) == (100, 100, 100)
    assert tuple(out[0, 1]) == (178, 50, 50)


def test_panel_has_three_tiles():
    image = np.zeros((20, 30, 3), dtype=np.uint8)
    mask = np.ones((20, 30), dtype=np.uint8)
    p = panel(image, mask, mask, COLORS)
    assert isinstance(p, Image.Image) and p.width >= 90 and p.height > 20
    assert panel(image, mask, None, COLORS).width < p.width


def test_loss_curve_png(tmp_path):
    path = tmp_path / "curve.png"
    loss_curve_png(
        {"train_loss": [1.0, 0.6, 0.4], "val_miou": [0.2, float("nan"), 0.7], "single": [0.5]},
        path,
        title="run",
    )
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape == (400, 640, 3)
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 5
