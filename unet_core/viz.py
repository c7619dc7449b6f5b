"""Pictures with Pillow only: coloured masks, overlays, side-by-side panels, loss curves."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_SERIES_COLORS = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
]


def colorize_mask(mask: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8; ignored or unknown indices are black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    colors = np.asarray(colors, dtype=np.uint8)
    lut[: len(colors)] = colors
    return lut[np.asarray(mask, dtype=np.uint8)]


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return image[:, :, :3].astype(np.uint8)


def overlay(
    image: np.ndarray, mask: np.ndarray, colors: np.ndarray, alpha: float = 0.5
) -> np.ndarray:
    """Blend the coloured mask over the image (background class 0 left unblended)."""
    base = _rgb(image).astype(np.float32)
    color = colorize_mask(mask, colors).astype(np.float32)
    blend = np.asarray(mask) > 0
    out = np.where(blend[:, :, None], (1 - alpha) * base + alpha * color, base)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def panel(
    image: np.ndarray,
    prediction: np.ndarray,
    truth: np.ndarray | None,
    colors: np.ndarray,
    *,
    labels: tuple[str, ...] = ("image", "prediction", "truth"),
) -> Image.Image:
    """image | prediction overlay | truth overlay, side by side with captions."""
    tiles = [_rgb(image), overlay(image, prediction, colors)]
    if truth is not None:
        tiles.append(overlay(image, truth, colors))
    h, w = tiles[0].shape[:2]
    caption, gap = 14, 4
    out = Image.new("RGB", (len(tiles) * w + (len(tiles) - 1) * gap, h + caption), "white")
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    for i, tile in enumerate(tiles):
        x = i * (w + gap)
        out.paste(Image.fromarray(tile), (x, caption))
        draw.text((x + 2, 1), labels[i] if i < len(labels) else "", fill=(0, 0, 0), font=font)
    return out


def stack_panels(panels: list[Image.Image]) -> Image.Image:
    """Panels one above the other (for a few validation examples in one PNG)."""
    width = max(p.width for p in panels)
    out = Image.new("RGB", (width, sum(p.height for p in panels)), "white")
    y = 0
    for p in panels:
        out.paste(p, (0, y))
        y += p.height
    return out


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 5, 10) if m * mag >= raw), default=raw)
    start = math.floor(lo / step) * step
    return [start + i * step for i in range(count + 2) if start + i * step <= hi + 1e-9]


def loss_curve_png(
    history: dict[str, list[float]],
    path: str | Path,
    *,
    title: str | None = None,
    size: tuple[int, int] = (640, 400),
) -> None:
    """A line chart of each series against epoch (1-based), with axes, ticks and a legend."""
    width, height = size
    left, right, top, bottom = 56, 150, 30 if title else 12, 36
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    values = [v for s in history.values() for v in s if v is not None and math.isfinite(v)]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    n = max((len(s) for s in history.values()), default=1)
    x0, x1, y0, y1 = left, width - right, top, height - bottom

    def sx(i: int) -> float:
        return x0 + (x1 - x0) * (i / max(1, n - 1))

    def sy(v: float) -> float:
        return y1 - (y1 - y0) * (v - lo) / (hi - lo)

    ticks = [t for t in _nice_ticks(lo, hi) if lo - 1e-9 <= t <= hi + 1e-9]
    for t in ticks:
        draw.line([(x0, sy(t)), (x1, sy(t))], fill=(230, 230, 230))
        draw.text((4, sy(t) - 6), f"{t:.3g}", fill=(60, 60, 60), font=font)
    for i in sorted({0, n - 1, *range(0, n, max(1, n // 8))}):
        draw.line([(sx(i), y1), (sx(i), y1 + 4)], fill=(60, 60, 60))
        draw.text((sx(i) - 4, y1 + 6), str(i + 1), fill=(60, 60, 60), font=font)
    draw.rectangle([x0, y0, x1, y1], outline=(60, 60, 60))
    draw.text(((x0 + x1) // 2 - 14, height - 14), "epoch", fill=(60, 60, 60), font=font)
    if title:
        draw.text((x0, 8), title, fill=(0, 0, 0), font=font)
    for k, (name, series) in enumerate(history.items()):
        color = _SERIES_COLORS[k % len(_SERIES_COLORS)]
        points = [
            (sx(i), sy(v)) for i, v in enumerate(series) if v is not None and math.isfinite(v)
        ]
        if len(points) > 1:
            draw.line(points, fill=color, width=2)
        for px, py in points:
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=color)
        ly = y0 + 4 + 16 * k
        draw.line([(x1 + 10, ly + 6), (x1 + 30, ly + 6)], fill=color, width=3)
        draw.text((x1 + 36, ly), name, fill=(0, 0, 0), font=font)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
