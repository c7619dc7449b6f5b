"""Image files to the pixels a model takes: 8-bit grayscale or RGB (``pixel_values="uint8"``,
what every model saved before preprocessing schemes takes), or the file's own dtype and channel
count (``"native"``: `unet_core.preprocessing.read_array`, fitted to the model's channels).
`unet_core.data` re-exports these names (the data contract's decoders)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from unet_core.config import Preprocessing
from unet_core.image_files import (
    DEFAULT_OPTIONS,
    DecodeOptions,
    ImageDecodeError,
    open_image,
)
from unet_core.preprocessing import as_supported_dtype, fit_channels, read_array_oriented

__all__ = [
    "decode_for_display",
    "decode_image",
    "decode_image_oriented",
    "display_image",
    "model_input",
    "read_image",
]

SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def _to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Grayscale of a wider type -> uint8.

    16-bit modes divide by 257 (65535 -> 255). Mode I (32-bit int) keeps 0..255 data as is,
    treats 0..65535 as 16-bit, and stretches anything else from its min to its max. Mode F
    maps [0, 1] data to 0..255, keeps [0, 255] data, and stretches anything else.
    """
    x = arr.astype(np.float64)
    if mode == "F":
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if mode in SIXTEEN_BIT_MODES:
        x = x / 257.0
    elif mode == "F" and lo >= 0 and hi <= 1:
        x = x * 255.0
    elif lo >= 0 and hi <= 255:
        pass
    elif mode == "I" and lo >= 0 and hi <= 65535:
        x = x / 257.0
    else:
        x = (x - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(x)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def decode_image(
    data: bytes,
    *,
    channels: int,
    source: str = "<image>",
    options: DecodeOptions = DEFAULT_OPTIONS,
) -> np.ndarray:
    """Encoded bytes -> HxWxC uint8 with C = ``channels`` (1 or 3), the right way up.

    Handles L, LA, P, PA, RGB, RGBA (alpha dropped, not composited), CMYK, YCbCr, 1-bit,
    16-bit (I;16*, scaled by 1/257), 32-bit int (I) and float (F) images. Grayscale is
    replicated for 3 channels; colour becomes luminance (PIL's ``convert("L")``) for 1.
    The EXIF orientation is applied (H x W as displayed) unless ``options.exif_transpose`` is
    off. Raises ImageDecodeError naming ``source`` for corrupt, truncated, empty, oversized
    (``options.max_image_pixels``: ImageTooLargeError) or non-image data.
    """
    return decode_image_oriented(data, channels=channels, source=source, options=options)[0]


def decode_image_oriented(
    data: bytes,
    *,
    channels: int,
    source: str = "<image>",
    options: DecodeOptions = DEFAULT_OPTIONS,
) -> tuple[np.ndarray, int]:
    """`decode_image`, and the EXIF orientation applied to it (1-8; 1 when none or off).
    With ``options.pixel_values == "native"``: the file's own dtype (uint8, uint16, float32)
    and any ``channels`` (`unet_core.preprocessing.read_array`, then `fit_channels`)."""
    if options.pixel_values == "native":
        image, applied = read_array_oriented(data, source=source, options=options)
        return fit_channels(image, channels, source=source), applied
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3 (8-bit decode), got {channels}")
    img, applied = open_image(data, source=source, kind="image", options=options)
    target = "L" if channels == 1 else "RGB"
    try:
        if img.mode in (*SIXTEEN_BIT_MODES, "I", "F"):
            img = Image.fromarray(_to_uint8(np.asarray(img), img.mode))
        elif img.mode in ("LA", "La"):
            img = img.getchannel("L")
        elif img.mode == "P":
            # Palette with transparency goes through RGBA so Pillow applies it without warning.
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        elif img.mode == "PA":
            img = img.convert("RGBA")
        if img.mode != target:
            img = img.convert(target)
    except (ValueError, OSError) as exc:
        raise ImageDecodeError(
            f"{source}: cannot convert a mode {img.mode} image to {target} ({exc}); re-save it "
            "as 8-bit grayscale or RGB"
        ) from exc
    arr = np.asarray(img, dtype=np.uint8)
    return (arr[:, :, None] if arr.ndim == 2 else arr), applied  # (H, W, C)


def read_image(
    path: str | Path, *, channels: int, options: DecodeOptions = DEFAULT_OPTIONS
) -> np.ndarray:
    """``decode_image`` of a local file."""
    return decode_image(
        Path(path).read_bytes(), channels=channels, source=str(path), options=options
    )


_HIGH_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def model_input(image: np.ndarray | Image.Image, preprocess: Preprocessing) -> np.ndarray:
    """The pixels the model takes: 8-bit (`_as_array`) for a model that decodes to uint8;
    else the image's own values (uint8, uint16, float32) fitted to its channels
    (`unet_core.preprocessing.fit_channels`)."""
    if preprocess.pixel_values == "uint8":
        return _as_array(image, preprocess.channels)
    arr = as_supported_dtype(np.asarray(image))
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    if arr.ndim != 3 or 0 in arr.shape:
        raise ValueError(f"expected an HxW or HxWxC image with H, W > 0, got shape {arr.shape}")
    return fit_channels(arr, preprocess.channels, source="<image>")


def _as_array(image: np.ndarray | Image.Image, channels: int) -> np.ndarray:
    """PIL image or HxW / HxWxC uint8 array -> HxWx``channels`` uint8.

    Grayscale is replicated to RGB, RGB becomes luminance (ITU-R 601, as PIL's "L"), alpha is
    dropped.
    """
    if isinstance(image, Image.Image):
        if image.mode in _HIGH_BIT_MODES:
            raise ValueError(
                f"PIL image mode {image.mode!r} is not 8-bit; scale it to 8 bits first "
                "(unet_core.data.decode_image does this for encoded files)"
            )
        if image.mode in ("LA", "La"):
            image = image.getchannel("L")
        arr = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    else:
        arr = np.asarray(image)
        if arr.dtype != np.uint8:
            raise ValueError(
                f"expected a uint8 image, got dtype {arr.dtype}; scale it to 0..255 and "
                "cast with .astype(np.uint8)"
            )
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4) or 0 in arr.shape:
        raise ValueError(
            f"expected an HxW or HxWxC image with C in 1..4 and H, W > 0, got shape {arr.shape}"
        )
    if arr.shape[2] in (2, 4):
        arr = arr[:, :, :-1]  # LA / RGBA: drop alpha
    if arr.shape[2] == 1 and channels == 3:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 3 and channels == 1:
        arr = np.asarray(Image.fromarray(np.ascontiguousarray(arr)).convert("L"))[:, :, None]
    return arr


def display_image(image: np.ndarray) -> np.ndarray:
    """An image to look at (overlays): uint8 as it is; 16-bit and float images with more or
    fewer than 3 channels become 8-bit grayscale (their first channel) or RGB (the first
    three), each stretched from its min to its max."""
    if image.dtype == np.uint8:
        return image
    shown = image[:, :, :3] if image.shape[2] >= 3 else image[:, :, :1]
    x = np.nan_to_num(shown.astype(np.float32))
    low, high = x.min(axis=(0, 1)), x.max(axis=(0, 1))
    x = (x - low) * (255.0 / np.where(high > low, high - low, 1.0))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def decode_for_display(
    data: bytes, *, source: str = "<image>", options: DecodeOptions = DEFAULT_OPTIONS
) -> np.ndarray:
    """Encoded bytes -> HxWx3 uint8 to look at (the QC report's thumbnails): an 8-bit decode
    with ``options``, as the mask was made; for a model that reads pixels as they come, or a
    file only such a read takes (a 4-band or float TIFF), `display_image` of its own values,
    grey replicated to RGB."""
    if options.pixel_values != "native":
        try:
            return decode_image(data, channels=3, source=source, options=options)
        except ImageDecodeError:
            pass
    shown = display_image(read_array_oriented(data, source=source, options=options)[0])
    return shown[:, :, :3] if shown.shape[2] >= 3 else np.repeat(shown[:, :, :1], 3, axis=2)
