"""The decode stage: read each input's bytes and decode it, one error row per bad file.

Runs as Ray Data tasks (``map_batches(decode_images, batch_format="pyarrow")``). Reading and
decoding are done here rather than by ``ray.data.read_images`` because one undecodable file
fails a whole read task there; here a corrupt, truncated, empty or non-image file becomes a row
with its ``error`` and the rest of the batch goes on.

Decoded pixels travel as raw bytes (``pixels``, HxWxC, C-order) with ``height``, ``width``,
``channels`` and ``dtype`` columns (uint8; uint16 or float32 for a model that takes images in
their own values: ``decode.pixel_values``): images of any size share one Arrow schema. Decoding
follows the job's `DecodeOptions` (``decode=``, shipped with every call): the EXIF orientation
applied (``exif_orientation``, 1 = none; the pixels and sizes are those displayed), and the
pixel limit (an image above it is a row error naming the file and --max-image-pixels).
"""

from __future__ import annotations

import logging
import sys
import time

import numpy as np
import pyarrow as pa

from jobs.common import fs
from unet_core.data import decode_image_oriented
from unet_core.image_files import DEFAULT_OPTIONS, DecodeOptions, image_header

logger = logging.getLogger(__name__)

DECODED_FIELDS = [
    pa.field("pixels", pa.large_binary()),
    pa.field("height", pa.int32()),
    pa.field("width", pa.int32()),
    pa.field("channels", pa.int8()),
    pa.field("dtype", pa.string()),  # uint8, or a native model's uint16 / float32
    pa.field("exif_orientation", pa.int8()),  # applied (1 = none); null when unreadable
    pa.field("error", pa.string()),
    pa.field("seconds", pa.float64()),
]
"""Columns the decode stage appends to its input rows (which keep their own columns)."""


def read_and_decode(
    uri: str,
    *,
    channels: int,
    endpoint_url: str | None = None,
    decode: DecodeOptions = DEFAULT_OPTIONS,
) -> tuple[np.ndarray | None, int | None, str | None]:
    """(HxWxC image, EXIF orientation applied, None), or (None, None, error message naming the
    file); uint8, or the file's own values with ``decode.pixel_values == "native"``."""
    try:
        data = fs.read_bytes(uri, endpoint_url=endpoint_url)
    except Exception as exc:  # missing file, permissions, network: a row error, not a crash
        return None, None, f"{uri}: cannot read ({type(exc).__name__}: {exc})"
    try:
        image, orientation = decode_image_oriented(
            data, channels=channels, source=uri, options=decode
        )
        return image, orientation, None
    except ValueError as exc:  # ImageDecodeError (too large included) and conversion errors
        return None, None, str(exc)
    except Exception as exc:  # a decoder bug must not stop the job either
        return None, None, f"{uri}: cannot decode ({type(exc).__name__}: {exc})"


_ANY_SIZE = DecodeOptions(max_image_pixels=sys.maxsize)
"""A header is read whatever the pixel limit: no pixels are decoded (huge tiles size blocks)."""


def value_bytes(mode: str, pixel_values: str) -> int:
    """Bytes of one decoded pixel value: 1 for images converted to 8 bits; as they come
    ("native"), 2 for 16-bit modes and 4 for 32-bit integer and float ones."""
    if pixel_values == "uint8":
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4 if mode in ("I", "F") or mode.startswith(("I;32", "F;")) else 1


def estimate_image_bytes(
    uris: list[str],
    *,
    channels: int,
    endpoint_url: str | None = None,
    tries: int = 3,
    pixel_values: str = "uint8",
) -> int | None:
    """Decoded size (H * W * channels * bytes per value, `value_bytes`) of the first readable
    of ``uris``, from its header; ``pixel_values`` as the model decodes them."""
    for uri in uris[:tries]:
        try:
            data = fs.read_bytes(uri, endpoint_url=endpoint_url)
            mode, height, width = image_header(data, source=uri, options=_ANY_SIZE)
            return height * width * channels * value_bytes(mode, pixel_values)
        except Exception:  # a bad first file: try the next one
            continue
    return None


def image_from_row(
    pixels: pa.Scalar | bytes, height: int, width: int, channels: int, dtype: str | None = None
) -> np.ndarray:
    """Rebuild the HxWxC array (``dtype``: the row's, uint8 when None) from a row's raw pixel
    bytes (zero-copy from Arrow)."""
    buffer = pixels.as_buffer() if isinstance(pixels, pa.Scalar) else pixels
    return np.frombuffer(buffer, dtype=np.dtype(dtype or "uint8")).reshape(height, width, channels)


def decode_images(
    batch: pa.Table,
    *,
    channels: int,
    endpoint_url: str | None = None,
    decode: DecodeOptions = DEFAULT_OPTIONS,
) -> pa.Table:
    """Ray Data UDF: rows with an ``input`` URI -> the same rows plus DECODED_FIELDS."""
    pixels, heights, widths, chans, dtypes = [], [], [], [], []
    orientations, errors, seconds = [], [], []
    for uri in batch.column("input").to_pylist():
        start = time.perf_counter()
        image, orientation, error = read_and_decode(
            uri, channels=channels, endpoint_url=endpoint_url, decode=decode
        )
        if error is not None:
            logger.warning("%s", error)
        pixels.append(image.tobytes() if image is not None else b"")
        heights.append(image.shape[0] if image is not None else 0)
        widths.append(image.shape[1] if image is not None else 0)
        chans.append(image.shape[2] if image is not None else 0)
        dtypes.append(str(image.dtype) if image is not None else None)
        orientations.append(orientation)
        errors.append(error)
        seconds.append(time.perf_counter() - start)
    columns = [pixels, heights, widths, chans, dtypes, orientations, errors, seconds]
    out = batch
    for field, values in zip(DECODED_FIELDS, columns, strict=True):
        out = out.append_column(field, pa.array(values, type=field.type))
    return out
