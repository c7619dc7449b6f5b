"""A generated labelled data set: coloured shapes on textured backgrounds, seeded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from unet_core.classes import CLASS_MAP_FILENAME, ClassInfo, ClassMap

_SHAPES = [
    ("circle", (220, 60, 60)),
    ("square", (60, 90, 220)),
    ("triangle", (60, 190, 70)),
    ("ring", (230, 200, 40)),
]


def synthetic_class_map(num_classes: int = 3) -> ClassMap:
    """background = 0, then one class per shape; mask values spread over 0..255 for viewing."""
    if not 2 <= num_classes <= len(_SHAPES) + 1:
        raise ValueError(f"num_classes must be in 2..{len(_SHAPES) + 1}, got {num_classes}")
    step = 255 // (num_classes - 1)
    classes = [ClassInfo("background", 0, (0, 0, 0))]
    for i in range(1, num_classes):
        name, color = _SHAPES[i - 1]
        classes.append(ClassInfo(name, 255 if i == num_classes - 1 else i * step, color))
    return ClassMap(tuple(classes))


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth low-frequency texture plus pixel noise, grey-ish so shapes stand out."""
    coarse = rng.uniform(70, 150, size=(max(2, h // 16), max(2, w // 16), 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.float32)
    return smooth + rng.normal(0, 10, size=(h, w, 3))


def _draw(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)
    else:  # ring
        t = max(2, (x1 - x0) // 4)
        draw.ellipse(box, outline=fill, width=t)


def make_synthetic_dataset(
    root: str | Path,
    *,
    num_images: int = 24,
    size: int | tuple = 96,
    seed: int = 0,
    num_classes: int = 3,
) -> ClassMap:
    """Write ``root/images/*.png`` (RGB), ``root/masks/*.png`` (class values) and classes.json."""
    root = Path(root)
    h, w = (size, size) if isinstance(size, int) else size
    class_map = synthetic_class_map(num_classes)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colors = [c for _, c in _SHAPES]
    for i in range(num_images):
        image = _background(rng, h, w)
        mask = Image.new("L", (w, h), class_map.values[0])
        shapes_layer = Image.new("RGB", (w, h))
        shape_mask = Image.new("L", (w, h), 0)
        for _ in range(int(rng.integers(2, 5))):
            cls = int(rng.integers(1, num_classes))
            r = int(rng.integers(max(4, min(h, w) // 10), max(5, min(h, w) // 4)))
            cx, cy = int(rng.integers(r, w - r)), int(rng.integers(r, h - r))
            box = (cx - r, cy - r, cx + r, cy + r)
            jitter = rng.integers(-25, 26, size=3)
            fill = tuple(
                int(np.clip(c + j, 0, 255)) for c, j in zip(colors[cls - 1], jitter, strict=True)
            )
            _draw(ImageDraw.Draw(shapes_layer), _SHAPES[cls - 1][0], box, fill)
            _draw(ImageDraw.Draw(shape_mask), _SHAPES[cls - 1][0], box, 255)
            _draw(ImageDraw.Draw(mask), _SHAPES[cls - 1][0], box, class_map.values[cls])
        inside = np.asarray(shape_mask)[:, :, None] > 0
        layer = np.asarray(shapes_layer, dtype=np.float32) + rng.normal(0, 8, size=(h, w, 3))
        image = np.where(inside, layer, image)
        name = f"synth_{i:04d}.png"
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / "images" / name)
        mask.save(root / "masks" / name)
    (root / CLASS_MAP_FILENAME).write_text(class_map.to_json())
    return class_map
