"""Pictures with Pillow and NumPy only: coloured masks, overlays, panels, legends, loss curves.

Masks are (H, W) class indices; ``colors`` is a (K, 3) uint8 palette (``ClassMap.colors``).
Ignored pixels (``IGNORE_INDEX``) and indices without a colour are drawn black.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from unet_core.config import IGNORE_INDEX

# Tableau 10: distinct, colour-blind-friendly line colours for loss curves.
_SERIES_COLORS = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)
_TEXT = (40, 40, 40)
_AXIS = (90, 90, 90)
_GRID = (228, 228, 228)
_MIN_TILE = 128  # panel tiles narrower than this are upscaled so the captions fit


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's default font at ``size`` px (bitmap fallback when FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1 or no FreeType
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _palette(colors: np.ndarray | Sequence[Sequence[int]]) -> np.ndarray:
    colors = np.asarray(colors)
    if colors.ndim != 2 or colors.shape[1] != 3 or len(colors) > 256:
        raise ValueError(f"colors must be a (K, 3) RGB palette, got shape {colors.shape}")
    if colors.size and (colors.min() < 0 or colors.max() > 255):
        raise ValueError("colors must be RGB values in 0..255")
    return colors.astype(np.uint8)


def _as_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[:, :, 0]
    if mask.ndim != 2 or mask.dtype.kind not in "iub":
        raise ValueError(
            f"mask must be (H, W) integer class indices, got shape {mask.shape} dtype {mask.dtype}"
        )
    return mask


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """HxW, HxWx1, HxWx3 or HxWx4 uint8 -> HxWx3 uint8 (gray repeated, alpha dropped)."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or image.dtype != np.uint8:
        raise ValueError(
            f"image must be uint8 HxW or HxWxC with C in (1, 3, 4), got shape {image.shape} "
            f"dtype {image.dtype}"
        )
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def colorize_mask(mask: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8; ignored and uncoloured indices are black."""
    mask = _as_mask(mask)
    palette = _palette(colors)
    lut = np.zeros((257, 3), dtype=np.uint8)  # row 256: anything outside 0..255
    lut[: len(palette)] = palette
    lut[IGNORE_INDEX] = 0
    if mask.dtype == np.uint8:
        return lut[mask]
    index = np.where((mask >= 0) & (mask <= 255), mask, 256).astype(np.intp)
    return lut[index]


def overlay(
    image: np.ndarray, mask: np.ndarray, colors: np.ndarray, alpha: float = 0.5
) -> np.ndarray:
    """Blend the coloured mask over the image: ``(1 - alpha) * image + alpha * colour``.

    Pixels whose class colour is black (the usual background) and ignored pixels show the image
    unchanged, so a black background does not darken the picture. Grayscale images (HxW or
    HxWx1) come back as RGB. Returns (H, W, 3) uint8.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    base = _as_rgb(image)
    mask = _as_mask(mask)
    if mask.shape != base.shape[:2]:
        raise ValueError(
            f"mask shape {mask.shape} does not match image size {base.shape[:2]}; resize the mask "
            "with nearest-neighbour first"
        )
    color = colorize_mask(mask, colors)
    tint = color.any(axis=2, keepdims=True)  # (H, W, 1): black means "leave alone"
    blended = (1.0 - alpha) * base.astype(np.float32) + alpha * color.astype(np.float32)
    return np.where(tint, np.clip(blended + 0.5, 0, 255).astype(np.uint8), base)


def legend(
    class_names: Sequence[str], colors: np.ndarray, *, width: int = 320, font_size: int = 12
) -> Image.Image:
    """A white strip of colour swatches and class names, wrapped to ``width`` pixels."""
    palette = _palette(colors)
    if len(class_names) > len(palette):
        raise ValueError(f"{len(class_names)} class names but only {len(palette)} colours")
    font = _font(font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = max(font_size + 6, 14)
    pad, swatch = 4, font_size
    items, x, y = [], pad, pad
    for name, rgb in zip(class_names, palette, strict=False):
        w = swatch + 4 + _text_size(probe, str(name), font)[0] + 10
        if x + w > width and x > pad:
            x, y = pad, y + line_h
        items.append((x, y, str(name), tuple(int(c) for c in rgb)))
        x += w
    out = Image.new("RGB", (width, y + line_h + pad), "white")
    draw = ImageDraw.Draw(out)
    for x, y, name, rgb in items:
        draw.rectangle([x, y + 2, x + swatch, y + 2 + swatch], fill=rgb, outline=_AXIS)
        draw.text((x + swatch + 4, y + 2 + swatch // 2), name, fill=_TEXT, font=font, anchor="lm")
    return out


def panel(
    image: np.ndarray,
    prediction: np.ndarray,
    truth: np.ndarray | None,
    colors: np.ndarray,
    *,
    labels: Sequence[str] = ("image", "prediction", "truth"),
    alpha: float = 0.5,
    class_names: Sequence[str] | None = None,
    scale: int | None = None,
) -> Image.Image:
    """image | prediction overlay | truth overlay (truth optional), side by side with captions.

    ``scale`` enlarges every tile by an integer factor (nearest neighbour); by default tiles
    narrower than 128 px are enlarged until they are at least that wide so captions fit.
    ``class_names`` adds a legend strip underneath.
    """
    rgb = _as_rgb(image)
    tiles = [rgb, overlay(rgb, prediction, colors, alpha)]
    if truth is not None:
        tiles.append(overlay(rgb, truth, colors, alpha))
    if len(labels) < len(tiles):
        raise ValueError(f"{len(tiles)} tiles need {len(tiles)} labels, got {list(labels)}")
    h, w = rgb.shape[:2]
    scale = scale or max(1, math.ceil(_MIN_TILE / max(1, w)))
    if scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    tw, th = w * scale, h * scale
    font_size = 12
    font = _font(font_size)
    caption, gap = font_size + 8, 4
    out_w = len(tiles) * tw + (len(tiles) - 1) * gap
    strip = legend(class_names, colors, width=out_w) if class_names is not None else None
    out_h = caption + th + (strip.height if strip is not None else 0)
    out = Image.new("RGB", (out_w, out_h), "white")
    draw = ImageDraw.Draw(out)
    for i, tile in enumerate(tiles):
        x = i * (tw + gap)
        picture = Image.fromarray(tile)
        if scale != 1:
            picture = picture.resize((tw, th), Image.Resampling.NEAREST)
        out.paste(picture, (x, caption))
        draw.text((x + tw // 2, caption // 2), str(labels[i]), fill=_TEXT, font=font, anchor="mm")
    if strip is not None:
        out.paste(strip, (0, caption + th))
    return out


def stack_panels(panels: Sequence[Image.Image], *, gap: int = 4) -> Image.Image:
    """Panels one above the other on white, e.g. a few validation examples in one PNG."""
    if not panels:
        raise ValueError("stack_panels needs at least one panel")
    width = max(p.width for p in panels)
    height = sum(p.height for p in panels) + gap * (len(panels) - 1)
    out = Image.new("RGB", (width, height), "white")
    y = 0
    for p in panels:
        out.paste(p.convert("RGB"), (0, y))
        y += p.height + gap
    return out


def save_png(array: np.ndarray | Image.Image, path: str | Path) -> None:
    """Write an (H, W) or (H, W, C) uint8 array (C in 1, 3, 4) or a PIL image as PNG."""
    if isinstance(array, Image.Image):
        img = array
    else:
        array = np.asarray(array)
        if array.dtype != np.uint8 or array.ndim not in (2, 3):
            raise ValueError(
                f"save_png needs uint8 HxW or HxWxC, got shape {array.shape} dtype {array.dtype} "
                f"for {path}; convert with .astype(np.uint8) after scaling to 0..255"
            )
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        img = Image.fromarray(array)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")


# ---- loss curves -----------------------------------------------------------------------------


def _nice_step(span: float, count: int, *, integer: bool = False) -> float:
    """A 1-2-5 step that cuts ``span`` into about ``count`` intervals (>= 1 when ``integer``)."""
    raw = span / max(1, count)
    if integer and raw <= 1:
        return 1.0
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw * (1 - 1e-9))


def _ticks(lo: float, hi: float, count: int, *, integer: bool = False) -> tuple[list[float], float]:
    step = _nice_step(hi - lo, count, integer=integer)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    t = first
    while t <= hi + step * 1e-9:
        ticks.append(0.0 if abs(t) < step * 1e-9 else t)
        t = first + len(ticks) * step
    return ticks, step


def _tick_label(value: float, step: float) -> str:
    if step >= 1 and abs(value) < 1e6:
        return f"{value:.0f}"
    if 1e-4 <= step < 1 and abs(value) < 1e6:
        decimals = max(0, -math.floor(math.log10(step) + 1e-9))
        decimals += 0 if round(step * 10**decimals, 6).is_integer() else 1
        return f"{value:.{decimals}f}"
    return f"{value:.3g}"


def _shorten(name: str, limit: int = 28) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "\u2026"


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def loss_curve_png(
    history: Mapping[str, Sequence[float | None]],
    path: str | Path,
    *,
    title: str | None = None,
    size: tuple[int, int] = (640, 400),
    xlabel: str = "epoch",
    ylabel: str | None = None,
) -> None:
    """Plot each series against epoch (1-based) as a PNG line chart with axes, ticks and legend.

    Series may have different lengths (all start at epoch 1); NaN, inf and None are gaps (the
    line breaks there). A lone point is drawn as a dot. All series share one y axis, so pass
    series of similar scale (losses together, scores together).
    """
    ss = 2  # draw at twice the size, then downsample: cheap anti-aliasing
    width, height = size[0] * ss, size[1] * ss
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = _font(11 * ss)
    title_font = _font(13 * ss)
    series = [
        (_shorten(str(name)), [float(v) if _finite(v) else math.nan for v in values])
        for name, values in history.items()
    ]

    values = [v for _, s in series for v in s if math.isfinite(v)]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi - lo < 1e-12 * max(1.0, abs(hi)):
        pad = abs(hi) * 0.1 or 0.5
        lo, hi = lo - pad, hi + pad
    else:
        pad = (hi - lo) * 0.06
        # Non-negative data (losses, scores) keeps a non-negative axis.
        lo, hi = (max(0.0, lo - pad) if lo >= 0 else lo - pad), hi + pad
    n = max((len(s) for _, s in series), default=0)
    x_lo, x_hi = (0.5, 1.5) if n <= 1 else (1.0, float(n))
    y_ticks, y_step = _ticks(lo, hi, 6)
    x_ticks, _ = _ticks(x_lo, x_hi, min(8, max(1, n - 1)), integer=True)
    if n > 1:  # keep the first and last points off the frame
        x_lo, x_hi = x_lo - 0.02 * (n - 1), x_hi + 0.02 * (n - 1)

    # Layout: margins sized from the text they hold.
    y_labels = [_tick_label(t, y_step) for t in y_ticks]
    label_w = max((_text_size(draw, s, font)[0] for s in y_labels), default=0)
    text_h = _text_size(draw, "0.9g", font)[1]
    legend_w = max((_text_size(draw, name, font)[0] for name, _ in series), default=0)
    left = 10 * ss + label_w + 8 * ss + (text_h + 6 * ss if ylabel else 0)
    right = (legend_w + 46 * ss) if series else 16 * ss
    top = (text_h + 22 * ss) if title else 14 * ss
    bottom = 2 * text_h + 22 * ss
    x0, x1, y0, y1 = left, width - right, top, height - bottom

    def sx(x: float) -> float:
        return x0 + (x1 - x0) * (x - x_lo) / (x_hi - x_lo)

    def sy(y: float) -> float:
        return y1 - (y1 - y0) * (y - lo) / (hi - lo)

    for t, label in zip(y_ticks, y_labels, strict=True):
        draw.line([(x0, sy(t)), (x1, sy(t))], fill=_GRID, width=ss)
        draw.line([(x0 - 4 * ss, sy(t)), (x0, sy(t))], fill=_AXIS, width=ss)
        draw.text((x0 - 7 * ss, sy(t)), label, fill=_TEXT, font=font, anchor="rm")
    for t in x_ticks:
        draw.line([(sx(t), y0), (sx(t), y1)], fill=_GRID, width=ss)
        draw.line([(sx(t), y1), (sx(t), y1 + 4 * ss)], fill=_AXIS, width=ss)
        draw.text((sx(t), y1 + 6 * ss), f"{t:.0f}", fill=_TEXT, font=font, anchor="mt")
    draw.rectangle([x0, y0, x1, y1], outline=_AXIS, width=ss)
    draw.text(((x0 + x1) / 2, height - 6 * ss), xlabel, fill=_TEXT, font=font, anchor="mb")
    if ylabel:
        label = Image.new("RGB", _text_size(draw, ylabel, font), "white")
        ImageDraw.Draw(label).text((0, 0), ylabel, fill=_TEXT, font=font, anchor="lt")
        label = label.rotate(90, expand=True)
        img.paste(label, (6 * ss, int((y0 + y1) / 2 - label.height / 2)))
    if title:
        draw.text(((x0 + x1) / 2, 8 * ss), title, fill=(0, 0, 0), font=title_font, anchor="mt")
    if not values:
        draw.text(((x0 + x1) / 2, (y0 + y1) / 2), "no data", fill=_AXIS, font=font, anchor="mm")

    for k, (name, ys) in enumerate(series):
        color = _SERIES_COLORS[k % len(_SERIES_COLORS)]
        run: list[tuple[float, float]] = []
        for i, y in enumerate([*ys, math.nan]):  # trailing NaN flushes the last run
            if math.isfinite(y):
                run.append((sx(i + 1), sy(y)))
                continue
            if len(run) > 1:
                draw.line(run, fill=color, width=2 * ss, joint="curve")
            if len(run) == 1 or (run and n <= 30):
                r = 3 * ss
                for px, py in run:
                    draw.ellipse([px - r, py - r, px + r, py + r], fill=color)
            run = []
        ly = y0 + 6 * ss + k * (text_h + 10 * ss)
        draw.line(
            [(x1 + 10 * ss, ly + text_h / 2), (x1 + 32 * ss, ly + text_h / 2)],
            fill=color,
            width=3 * ss,
        )
        draw.text((x1 + 38 * ss, ly + text_h / 2), name, fill=_TEXT, font=font, anchor="lm")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.resize(size, Image.Resampling.LANCZOS).save(path, format="PNG")
