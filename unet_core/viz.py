"""Pictures with Pillow and NumPy only: coloured masks, overlays, panels, legends.

Masks are (H, W) class indices; ``colors`` is a (K, 3) uint8 palette (``ClassMap.colors``).
Ignored pixels (``IGNORE_INDEX``) and indices without a colour are drawn black.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from unet_core.config import IGNORE_INDEX

_TEXT = (40, 40, 40)
_AXIS = (90, 90, 90)
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
