"""Generated labelled sets of the image kinds beyond 8-bit RGB: 4-band uint16 TIFF, 1-channel
12-bit PNG (values 0..4095 in a 16-bit container), 1-channel float32 TIFF.

Each image is a smooth, noisy background with one or two squares brighter than it; the mask is
0 (background) / 255 (object) in an 8-bit PNG. The 12-bit set is the issue's example: objects
about 600 of 4095 grey levels above the background, which 8-bit decoding (/ 257) flattens to
about two grey levels. Everything comes from one seeded generator: a seed gives the same bytes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from unet_core.classes import CLASS_MAP_FILENAME, ClassInfo, ClassMap

logger = logging.getLogger(__name__)

KINDS = ("uint16_tiff4", "png12", "float32_tiff")
"""The generated kinds: file format, dtype and channels of each in `make_image_kind_dataset`."""
BAND_NAMES = {"uint16_tiff4": ("red", "green", "blue", "nir"), "png12": ("gray",)}
"""Channel names written into classes.json ("channels") per kind; float32_tiff has none."""


def image_kind_class_map() -> ClassMap:
    return ClassMap((ClassInfo("background", 0, (0, 0, 0)), ClassInfo("object", 255, (255, 64, 0))))


def _objects(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(H, W) bool: one or two axis-aligned squares."""
    mask = np.zeros((h, w), bool)
    for _ in range(int(rng.integers(1, 3))):
        side = int(rng.integers(max(4, min(h, w) // 6), max(5, min(h, w) // 3)))
        y, x = int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
        mask[y : y + side, x : x + side] = True
    return mask


def _smooth(rng: np.random.Generator, h: int, w: int, amplitude: float) -> np.ndarray:
    """(H, W) float32 low-frequency field in [-amplitude, amplitude]."""
    coarse = rng.uniform(-amplitude, amplitude, size=(max(2, h // 16), max(2, w // 16)))
    img = Image.fromarray(coarse.astype(np.float32)).resize((w, h), Image.BILINEAR)
    return np.asarray(img, np.float32)


def make_image_kind(
    rng: np.random.Generator, kind: str, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """One (H, W, C) image of ``kind`` (its own dtype) and its (H, W) bool object mask."""
    h, w = size
    obj = _objects(rng, h, w)
    if kind == "png12":  # 12-bit: background ~2400, objects ~600 above, noise 60
        x = 2400 + _smooth(rng, h, w, 300) + rng.normal(0, 60, (h, w)) + 600 * obj
        return np.clip(np.rint(x), 0, 4095).astype(np.uint16)[:, :, None], obj
    if kind == "uint16_tiff4":  # objects bright in the near infrared, faint in red
        base = np.asarray([18000, 21000, 16000, 12000], np.float32)
        gain = np.asarray([1500, 0, 0, 9000], np.float32)
        x = base + _smooth(rng, h, w, 2500)[:, :, None] + rng.normal(0, 1200, (h, w, 4))
        x = x + obj[:, :, None] * gain
        return np.clip(np.rint(x), 0, 65535).astype(np.uint16), obj
    if kind == "float32_tiff":  # a signal around 0 with objects 2.5 above, noise 0.5
        x = _smooth(rng, h, w, 1.0) + rng.normal(0, 0.5, (h, w)) + 2.5 * obj
        return x.astype(np.float32)[:, :, None], obj
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _write_image(path: Path, image: np.ndarray, kind: str) -> None:
    if kind == "png12":
        Image.fromarray(image[:, :, 0]).save(path)  # mode I;16: a 16-bit grayscale PNG
        return
    import tifffile

    planar = {"planarconfig": "contig"} if image.shape[2] > 1 else {}
    data = image if image.shape[2] > 1 else image[:, :, 0]
    tifffile.imwrite(path, data, photometric="minisblack", metadata=None, **planar)


def make_image_kind_dataset(
    root: str | Path,
    *,
    kind: str,
    num_images: int = 16,
    size: int = 64,
    seed: int = 0,
    prefix: str = "kind",
) -> ClassMap:
    """Write ``root/images/<prefix>_NNNN.{tif,png}``, ``root/masks/<prefix>_NNNN.png`` (0/255)
    and ``root/classes.json`` (with the kind's channel names under "channels"); deterministic
    for a seed. Returns the class map."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ext = ".png" if kind == "png12" else ".tif"
    for i in range(num_images):
        image, obj = make_image_kind(rng, kind, (size, size))
        _write_image(root / "images" / f"{prefix}_{i:04d}{ext}", image, kind)
        Image.fromarray(obj.astype(np.uint8) * 255).save(root / "masks" / f"{prefix}_{i:04d}.png")
    class_map = image_kind_class_map()
    doc = class_map.to_dict()
    if kind in BAND_NAMES:
        doc["channels"] = list(BAND_NAMES[kind])
    (root / CLASS_MAP_FILENAME).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote %d %s pairs (%dx%d) to %s", num_images, kind, size, size, root)
    return class_map
