"""A generated labelled data set: textured coloured shapes on textured noisy backgrounds.

Each class has its own shape, colour and texture (ellipses are smooth red, rectangles striped
blue, triangles checkered green, diamonds dotted yellow) on a muted, blotchy, noisy background,
so a tiny UNet can overfit it in seconds while it still has to look at more than one pixel.
Everything is drawn from one seeded ``np.random.Generator``: a seed gives the same bytes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from unet_core.classes import CLASS_MAP_FILENAME, ClassInfo, ClassMap

logger = logging.getLogger(__name__)

# name, base colour, texture
_SHAPES = (
    ("ellipse", (215, 55, 55), "smooth"),
    ("rectangle", (50, 90, 215), "stripes"),
    ("triangle", (50, 185, 70), "checker"),
    ("diamond", (230, 200, 40), "dots"),
)
MAX_CLASSES = len(_SHAPES) + 1
MIN_SIZE = 16


def synthetic_class_map(num_classes: int = 3) -> ClassMap:
    """background (value 0), then one class per shape; values spread over 0..255 so the masks
    are visible in an image viewer (3 classes: 0, 127, 255)."""
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be in 2..{MAX_CLASSES}, got {num_classes}")
    step = 255 // (num_classes - 1)
    classes = [ClassInfo("background", 0, (0, 0, 0))]
    for i in range(1, num_classes):
        name, color, _ = _SHAPES[i - 1]
        classes.append(ClassInfo(name, 255 if i == num_classes - 1 else i * step, color))
    return ClassMap(tuple(classes))


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(H, W, 3) float: muted low-frequency blotches plus pixel noise."""
    grey = rng.uniform(80, 150)
    coarse = grey + rng.uniform(-20, 20, size=(max(2, h // 12), max(2, w // 12), 3))
    small = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8))
    smooth = np.asarray(small.resize((w, h), Image.BICUBIC), dtype=np.float32)
    return smooth + rng.normal(0.0, 10.0, size=(h, w, 3)).astype(np.float32)


def _textures(h: int, w: int, period: int) -> dict[str, np.ndarray]:
    """(H, W) float offsets per texture name, amplitude about +-25."""
    yy, xx = np.mgrid[0:h, 0:w]
    half = max(1, period // 2)
    return {
        "smooth": np.zeros((h, w), np.float32),
        "stripes": (25.0 * np.sign(np.sin((xx + yy) * (np.pi / half)))).astype(np.float32),
        "checker": np.where(((xx // half) + (yy // half)) % 2 == 0, 25.0, -25.0).astype(np.float32),
        "dots": np.where((xx % period < half) & (yy % period < half), -30.0, 10.0).astype(
            np.float32
        ),
    }


def _polygon(shape: str, cx: int, cy: int, r: int, rng: np.random.Generator) -> list:
    """Vertices of a rotated rectangle, triangle or diamond around (cx, cy), radius ~r."""
    angle = rng.uniform(0, 2 * np.pi)
    if shape == "rectangle":
        aspect = rng.uniform(0.5, 1.0)
        corners = [(1, aspect), (-1, aspect), (-1, -aspect), (1, -aspect)]
        pts = [(x * r * 0.85, y * r * 0.85) for x, y in corners]
    elif shape == "triangle":
        pts = [(r * np.cos(a), r * np.sin(a)) for a in (0, 2 * np.pi / 3, 4 * np.pi / 3)]
    else:  # diamond: a rhombus, one diagonal shorter
        pts = [(r, 0), (0, 0.6 * r), (-r, 0), (0, -0.6 * r)]
    c, s = np.cos(angle), np.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


def _draw_shapes(
    rng: np.random.Generator, h: int, w: int, num_classes: int
) -> tuple[np.ndarray, list[int]]:
    """(H, W) uint8 instance ids (0 = background, j = j-th shape) and the class of each shape.

    Every object class appears at least once; later shapes are drawn over earlier ones.
    """
    shape_classes = list(range(1, num_classes)) + [
        int(c) for c in rng.integers(1, num_classes, size=int(rng.integers(0, 3)))
    ]
    shape_classes = [shape_classes[i] for i in rng.permutation(len(shape_classes))]
    layer = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(layer)
    side = min(h, w)
    r_lo, r_hi = max(4, side // 10), max(5, side // 4)
    for j, cls in enumerate(shape_classes, start=1):
        r = int(rng.integers(r_lo, r_hi))
        cx, cy = int(rng.integers(r // 2, w - r // 2)), int(rng.integers(r // 2, h - r // 2))
        shape = _SHAPES[cls - 1][0]
        if shape == "ellipse":
            ry = int(r * rng.uniform(0.6, 1.0))
            draw.ellipse((cx - r, cy - ry, cx + r, cy + ry), fill=j)
        else:
            draw.polygon(_polygon(shape, cx, cy, r, rng), fill=j)
    return np.asarray(layer), shape_classes


def make_synthetic_image(
    rng: np.random.Generator, size: tuple[int, int], num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """One (H, W, 3) uint8 image and its (H, W) uint8 class-index mask."""
    h, w = size
    instances, shape_classes = _draw_shapes(rng, h, w, num_classes)
    cls_of = np.asarray([0, *shape_classes], dtype=np.uint8)  # instance id -> class
    colour_of = np.zeros((len(cls_of), 3), np.float32)  # instance id -> colour, jittered
    for j, cls in enumerate(shape_classes, start=1):
        colour_of[j] = np.asarray(_SHAPES[cls - 1][1]) + rng.uniform(-20, 20, size=3)
    classes = cls_of[instances]  # (H, W) class index
    textures = _textures(h, w, period=int(rng.integers(4, 7)))
    texture = np.zeros((h, w), np.float32)
    for cls in range(1, num_classes):
        sel = classes == cls
        texture[sel] = textures[_SHAPES[cls - 1][2]][sel]
    shapes = colour_of[instances] + texture[:, :, None]
    shapes += rng.normal(0.0, 8.0, size=(h, w, 3)).astype(np.float32)
    image = np.where((instances > 0)[:, :, None], shapes, _background(rng, h, w))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), classes


def make_synthetic_dataset(
    root: str | Path,
    *,
    num_images: int = 24,
    size: int | tuple[int, int] = 96,
    seed: int = 0,
    num_classes: int = 3,
    prefix: str = "synth",
) -> ClassMap:
    """Write ``root/images/<prefix>_NNNN.png`` (RGB), ``root/masks/<prefix>_NNNN.png`` (8-bit
    class values of the returned class map) and ``root/classes.json``; deterministic for a seed.
    Another ``prefix`` gives a set whose keys differ (a validation set beside a training one).

    ``size`` is an int (square) or (height, width), at least 16 each; ``num_classes`` in 2..5
    counts the background.
    """
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h < MIN_SIZE or w < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE} x {MIN_SIZE}, got {h} x {w}")
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    class_map = synthetic_class_map(num_classes)
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    values = np.asarray(class_map.values, dtype=np.uint8)
    rng = np.random.default_rng(seed)
    for i in range(num_images):
        image, classes = make_synthetic_image(rng, (h, w), num_classes)
        name = f"{prefix}_{i:04d}.png"
        Image.fromarray(image).save(root / "images" / name)
        Image.fromarray(values[classes]).save(root / "masks" / name)
    class_map.save(root / CLASS_MAP_FILENAME)
    logger.info(
        "wrote %d synthetic pairs (%dx%d, %d classes) to %s", num_images, h, w, num_classes, root
    )
    return class_map
