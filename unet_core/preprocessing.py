"""Images as they come: pixels in the file's own type and channel count, and their statistics.

`read_array` decodes an encoded image to HxWxC in the file's own dtype: uint8, uint16 (16-bit
files, and 12- or 10-bit data stored in 16-bit containers, keep every grey level) or float32,
with any channel count. TIFF goes through ``tifffile`` (multi-band, multi-page, OME-TIFF: every
axis other than height and width becomes a channel); other formats through Pillow. EXIF (and
TIFF) orientation, the pixel limit and corrupt-file errors are `unet_core.image_files`'s.

`channel_statistics` summarises a set of such arrays per channel (robust percentiles from a
seeded pixel subsample, mean, std, min, max, dtype, the bit depth the data really uses): what a
normalisation scheme is chosen and fitted from (`unet_core.config.Preprocessing`).
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from unet_core.config import Preprocessing
from unet_core.image_files import (
    DEFAULT_OPTIONS,
    DecodeOptions,
    ImageDecodeError,
    ImageTooLargeError,
    image_header,
    open_image,
    orient_array,
    over_limit,
    too_large_error,
    unreadable_error,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ChannelStats",
    "array_header",
    "DecodeOptions",
    "ImageDecodeError",
    "as_supported_dtype",
    "channel_statistics",
    "choose_scheme",
    "fit_preprocessing",
    "fit_channels",
    "read_array",
    "read_array_oriented",
]

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_TIFF_ORIENTATION = 274
_ALPHA = {"LA": 1, "La": 1, "RGBA": 3, "RGBa": 3, "RGBX": 3}
"""Modes with an alpha (or pad) band last: the colour channels kept."""
PERCENTILES = (0.5, 99.5)
"""The robust range of a channel (percent): what clip_zscore clips to."""


def as_supported_dtype(arr: np.ndarray) -> np.ndarray:
    """uint8, uint16 and float32 pass; bool -> uint8 0/255; other integers -> uint16 when their
    values fit in 0..65535, else float32; other floats -> float32 (native byte order)."""
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * np.uint8(255)
    if arr.dtype.kind in "ui":
        if arr.dtype.itemsize == 1 and arr.dtype.kind == "u":
            return arr
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if arr.dtype.kind == "u" and arr.dtype.itemsize == 2:
            return arr.astype(np.uint16, copy=False)
        if lo >= 0 and hi <= 65535:
            return arr.astype(np.uint16)
        return arr.astype(np.float32)
    if arr.dtype.kind == "f":
        return arr.astype(np.float32, copy=False)
    raise ValueError(f"unsupported pixel type {arr.dtype} (expected integers or floats)")


def _hwc(arr: np.ndarray) -> np.ndarray:
    return arr[:, :, None] if arr.ndim == 2 else arr  # (H, W, C)


def _pillow_array(data: bytes, source: str, options: DecodeOptions) -> tuple[np.ndarray, int]:
    img, applied = open_image(data, source=source, kind="image", options=options)
    mode = img.mode
    try:
        if mode == "1":
            img = img.convert("L")
        elif mode == "P":  # palette with transparency through RGBA so Pillow applies it
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        elif mode == "PA":
            img = img.convert("RGBA")
        elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            img = img.convert("RGB")
        arr = np.asarray(img)
    except (ValueError, OSError) as exc:
        raise ImageDecodeError(
            f"{source}: cannot read a mode {mode} image's pixels ({exc}); re-save it as "
            "grayscale, RGB, 16-bit or float TIFF/PNG"
        ) from exc
    if img.mode in _ALPHA:  # alpha dropped, not composited (as decode_image does)
        arr = arr[:, :, : _ALPHA[img.mode]]
    return _hwc(as_supported_dtype(arr)), applied


def _tiff_array(data: bytes, source: str, options: DecodeOptions) -> tuple[np.ndarray, int]:
    """The first series of a TIFF as (H, W, C): every axis but Y and X becomes a channel
    (samples, pages, bands, in file order)."""
    import tifffile

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        series = tif.series[0]
        axes, shape = series.axes, series.shape
        if "Y" not in axes or "X" not in axes:
            raise ValueError(f"TIFF series without Y and X axes (axes {axes!r})")
        h, w = shape[axes.index("Y")], shape[axes.index("X")]
        tag = tif.pages[0].tags.get(_TIFF_ORIENTATION)
        applied = int(tag.value) if tag is not None and options.exif_transpose else 1
        if over_limit(h, w, options):
            raise too_large_error(source, "image", f"{w}x{h} = {w * h} pixels", _limit(options))
        arr = series.asarray()
    order = [axes.index("Y"), axes.index("X")]
    arr = np.moveaxis(arr, order, [0, 1]).reshape(h, w, -1)  # (H, W, C)
    applied = applied if 1 <= applied <= 8 else 1
    return orient_array(as_supported_dtype(arr), applied), applied


def _limit(options: DecodeOptions) -> int | None:
    return options.max_image_pixels


def read_array(data: bytes, *, source: str, options: DecodeOptions = DEFAULT_OPTIONS) -> np.ndarray:
    """Encoded bytes -> HxWxC in the file's own dtype (uint8, uint16 or float32), any C.

    TIFF: ``tifffile`` first (multi-band and multi-page kept as channels, the orientation tag
    applied unless ``options.exif_transpose`` is off); a TIFF it cannot read (a compression it
    lacks a codec for) goes to Pillow. Others: Pillow (alpha dropped; palette, 1-bit, CMYK and
    YCbCr as 8-bit RGB or grayscale; 16-bit grayscale as uint16; mode I as uint16 when it fits,
    else float32; mode F as float32). Raises ImageDecodeError naming ``source`` for empty,
    corrupt, truncated, oversized (ImageTooLargeError) or non-image data.
    """
    return read_array_oriented(data, source=source, options=options)[0]


def read_array_oriented(
    data: bytes, *, source: str, options: DecodeOptions = DEFAULT_OPTIONS
) -> tuple[np.ndarray, int]:
    """`read_array`, and the orientation applied to it (1-8; 1 when none or off)."""
    if not data:
        raise ImageDecodeError(f"{source}: empty file (0 bytes); re-export or remove it")
    if data[:4] in _TIFF_MAGIC:
        try:
            return _tiff_array(data, source, options)
        except ImageTooLargeError:
            raise
        except Exception as exc:  # tifffile raises many types; Pillow gets its turn
            logger.debug("%s: tifffile could not read it (%s); trying Pillow", source, exc)
            try:
                return _pillow_array(data, source, options)
            except ImageTooLargeError:
                raise
            except ImageDecodeError as pil_exc:
                raise unreadable_error(source, "image", exc) from pil_exc
    return _pillow_array(data, source, options)


_ONE_CHANNEL_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def array_header(
    data: bytes, *, source: str, options: DecodeOptions = DEFAULT_OPTIONS
) -> tuple[int, int, int]:
    """(channels, height, width) of an image as `read_array` decodes it, from its header (TIFF:
    its directories; no pixels decoded). Raises ImageTooLargeError above the limit and what the
    readers raise for a header they cannot read (ValueError, OSError, SyntaxError)."""
    if data[:4] in _TIFF_MAGIC:
        import tifffile

        try:
            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                series = tif.series[0]
                axes, shape = series.axes, series.shape
                h, w = shape[axes.index("Y")], shape[axes.index("X")]
                tag = tif.pages[0].tags.get(_TIFF_ORIENTATION)
        except Exception:  # not readable by tifffile: Pillow's header below decides
            pass
        else:
            channels = math.prod(shape) // (h * w)
            if over_limit(h, w, options):
                raise too_large_error(source, "image", f"{w}x{h} = {w * h} pixels", _limit(options))
            turned = options.exif_transpose and tag is not None and int(tag.value) in (5, 6, 7, 8)
            return channels, (w if turned else h), (h if turned else w)
    mode, height, width = image_header(data, source=source, options=options)
    return (1 if mode in _ONE_CHANNEL_MODES else 3), height, width


def fit_channels(image: np.ndarray, channels: int, *, source: str) -> np.ndarray:
    """An HxWxC image as the model's ``channels``: as it is when C matches, a grayscale image
    replicated, RGB to luminance for a 1-channel model (8-bit: Pillow's ``convert("L")``
    arithmetic); any other count is an ImageDecodeError naming the file."""
    have = image.shape[2]
    if have == channels:
        return image
    if have == 1:
        return np.repeat(image, channels, axis=2)
    if have == 3 and channels == 1:
        if image.dtype == np.uint8:  # ITU-R 601-2 in Pillow's fixed point (L24 >> 16)
            rgb = image.astype(np.uint32)
            luma = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
            return luma.astype(np.uint8)[:, :, None]
        luma = image.astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], np.float32)
        if image.dtype == np.uint16:
            luma = np.clip(np.rint(luma), 0, 65535)
        return luma.astype(image.dtype)[:, :, None]
    raise ImageDecodeError(
        f"{source}: image has {have} channels, the model takes {channels}; give the model "
        f"{channels}-channel images (or train one on {have}-channel images)"
    )


@dataclass(frozen=True)
class ChannelStats:
    """Per-channel intensity statistics of a set of images, in the data's own units."""

    channels: int
    """Channels of every image."""
    dtype: str
    """The widest pixel type met: uint8, uint16 or float32."""
    bit_depth: int | None
    """Bits the integer data really uses (12 for 0..4095 in uint16: ceil(log2(max + 1)),
    at least 1); None for float data."""
    p_low: tuple[float, ...]
    """The 0.5th percentile per channel (of the sampled pixels)."""
    p_high: tuple[float, ...]
    """The 99.5th percentile per channel (of the sampled pixels)."""
    mean: tuple[float, ...]
    """Mean per channel (of the sampled pixels)."""
    std: tuple[float, ...]
    """Standard deviation per channel (of the sampled pixels)."""
    min: tuple[float, ...]
    """Smallest finite value per channel (over every pixel of every image)."""
    max: tuple[float, ...]
    """Largest finite value per channel (over every pixel of every image)."""
    images: int
    """Images summarised."""
    pixels: int
    """Pixels sampled (per channel) for the percentiles, mean and std."""

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChannelStats:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


_DTYPE_RANK = {"uint8": 0, "uint16": 1, "float32": 2}


def channel_statistics(
    arrays: Iterable[np.ndarray], *, max_pixels_per_image: int = 65_536, seed: int = 0
) -> ChannelStats:
    """`ChannelStats` of HxWxC (or HxW) arrays of one channel count.

    From each image at most ``max_pixels_per_image`` pixels are drawn (with replacement,
    uniformly, from a generator seeded with ``seed``; all of them when the image is smaller),
    so the result is the same for the same arrays in the same order and memory stays bounded
    by images x that many pixels. Non-finite float values are left out.
    """
    if max_pixels_per_image < 1:
        raise ValueError(f"max_pixels_per_image must be >= 1, got {max_pixels_per_image}")
    rng = np.random.default_rng(seed)
    samples: list[np.ndarray] = []
    lows: list[np.ndarray] = []
    highs: list[np.ndarray] = []
    channels: int | None = None
    dtype = "uint8"
    for i, arr in enumerate(arrays):
        arr = _hwc(as_supported_dtype(np.asarray(arr)))
        if channels is None:
            channels = arr.shape[2]
        elif arr.shape[2] != channels:
            raise ValueError(
                f"image {i} has {arr.shape[2]} channels, the ones before it {channels}: every "
                "image of a set needs the same channel count (re-export the odd ones)"
            )
        if _DTYPE_RANK[str(arr.dtype)] > _DTYPE_RANK[dtype]:
            dtype = str(arr.dtype)
        flat = arr.reshape(-1, channels).astype(np.float64)  # (H*W, C)
        finite = np.where(np.isfinite(flat), flat, np.nan)
        lows.append(np.nanmin(finite, axis=0) if flat.size else np.full(channels, np.nan))
        highs.append(np.nanmax(finite, axis=0) if flat.size else np.full(channels, np.nan))
        if len(flat) > max_pixels_per_image:
            finite = finite[rng.integers(0, len(flat), size=max_pixels_per_image)]
        samples.append(finite)
    if channels is None:
        raise ValueError("no images to summarise: the sample is empty")
    pixels = np.concatenate(samples)  # (N, C)
    p_low, p_high = np.nanpercentile(pixels, PERCENTILES, axis=0)
    hi = np.nanmax(np.stack(highs), axis=0)
    bits = None
    if dtype != "float32":
        top = float(np.nanmax(hi)) if np.isfinite(hi).any() else 0.0
        bits = max(1, math.ceil(math.log2(top + 1))) if top > 0 else 1

    def _t(v: np.ndarray) -> tuple[float, ...]:
        return tuple(float(x) for x in v)

    return ChannelStats(
        channels=channels,
        dtype=dtype,
        bit_depth=bits,
        p_low=_t(p_low),
        p_high=_t(p_high),
        mean=_t(np.nanmean(pixels, axis=0)),
        std=_t(np.nanstd(pixels, axis=0)),
        min=_t(np.nanmin(np.stack(lows), axis=0)),
        max=_t(hi),
        images=len(samples),
        pixels=len(pixels),
    )


def choose_scheme(stats: ChannelStats) -> str:
    """The normalisation the data call for: "scale_zscore" for 8-bit images (natural images:
    0..1, then the set's mean and std), "clip_zscore" for wider or float data (clip to the
    set's 0.5/99.5 percentiles, then z-score)."""
    return "scale_zscore" if stats.dtype == "uint8" else "clip_zscore"


def fit_preprocessing(
    stats: ChannelStats, *, scheme: str | None = None, channel_names: Iterable[str] = ()
) -> Preprocessing:
    """The `Preprocessing` of a scheme (None: `choose_scheme`) fitted to a set's statistics.
    legacy_uint8 keeps its fixed mean 0.5 / std 0.25; a channel of zero spread gets std 1
    (its pixels all normalise to 0 and stay finite)."""
    scheme = scheme or choose_scheme(stats)
    names = tuple(channel_names)
    if scheme == "legacy_uint8":
        return Preprocessing.for_channels(stats.channels)
    if scheme == "scale_zscore":
        mean = tuple(m / 255.0 for m in stats.mean)
        std = tuple(s / 255.0 if s > 0 else 1.0 for s in stats.std)
        return Preprocessing(
            channels=stats.channels, mean=mean, std=std, scheme=scheme, channel_names=names
        )
    return Preprocessing(
        channels=stats.channels,
        mean=stats.mean,
        std=tuple(s if s > 0 else 1.0 for s in stats.std),
        scheme=scheme,
        clip_low=stats.p_low,
        clip_high=stats.p_high,
        channel_names=names,
    )
