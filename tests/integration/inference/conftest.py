"""Fixtures of the segment and evaluate tests."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.integration.inference.helpers import make_checkpoint, register_checkpoint
from unet_core.classes import ClassMap


@pytest.fixture
def registered(tmp_path, mlflow_uri, synthetic_root):
    """Version 1 (random seed 1) then version 2 (seed 0) of `unet`; @champion -> 2. Returns
    (version 2's checkpoint, "2")."""
    class_map = ClassMap.from_file(synthetic_root / "classes.json")
    register_checkpoint(make_checkpoint(tmp_path / "v1.pt", class_map, seed=1), tmp_path / "art")
    ckpt = make_checkpoint(tmp_path / "v2.pt", class_map, seed=0)
    version = register_checkpoint(ckpt, tmp_path / "art")
    return ckpt, version


def _png(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def _noise(rng: np.random.Generator, h: int, w: int, c: int = 3) -> np.ndarray:
    return rng.integers(0, 256, size=(h, w, c), dtype=np.uint8)


@pytest.fixture(scope="session")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(_noise(rng, 40, 56))
    good = _png(rgb)
    files = {
        "corrupt.png": good[:60] + bytes(rng.integers(0, 256, 400, dtype=np.uint8)),
        "empty.png": b"",
        "text.png": b"this is a text file, not a PNG\n",
        "rgba.png": _png(Image.fromarray(_noise(rng, 33, 47, 4), "RGBA")),
        "gray16.png": _png(Image.fromarray(rng.integers(0, 65536, (30, 50), dtype=np.uint16))),
        "palette.png": _png(Image.fromarray(_noise(rng, 36, 36)).quantize(colors=16)),
        "one_pixel.png": _png(Image.fromarray(_noise(rng, 1, 1))),
        "nested/dir/plain.BMP": None,
        "scan.TIF": None,
        "cmyk.jpg": None,
        "truncated.jpg": None,
        "big.png": _png(Image.fromarray(_noise(rng, 500, 700))),  # > --tile-size 256: tiles
        "huge.jpg": None,  # 3000 x 2000
        "notes.txt": b"ignored: not an image extension",
    }
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if data is not None:
            path.write_bytes(data)
    Image.fromarray(_noise(rng, 24, 31)).save(root / "nested/dir/plain.BMP", format="BMP")
    Image.fromarray(_noise(rng, 45, 29)).save(root / "scan.TIF", format="TIFF")
    Image.fromarray(_noise(rng, 32, 48, 4), "RGBA").convert("CMYK").save(root / "cmyk.jpg", "JPEG")
    buffer = io.BytesIO()
    Image.fromarray(_noise(rng, 64, 64)).save(buffer, format="JPEG", quality=90)
    (root / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    # Smooth content so JPEG stays small; the size is what matters.
    yy, xx = np.mgrid[0:2000, 0:3000]
    huge = np.stack([(xx // 12) % 256, (yy // 8) % 256, ((xx + yy) // 20) % 256], axis=2)
    Image.fromarray(huge.astype(np.uint8)).save(root / "huge.jpg", quality=80)
    return root
