"""Opening encoded image and mask files: the right way up, within a pixel limit, by name.

Three settings (`DecodeOptions`, plain data that Ray ships to every decode task and actor):

- **EXIF orientation.** A camera or scanner often stores pixels as the sensor read them and
  records how to turn them in the EXIF Orientation tag (JPEG, TIFF, also PNG eXIf and WebP).
  Every viewer applies it, so images and the masks drawn on them are applied it too
  (`PIL.ImageOps.exif_transpose`: orientations 2-8 flip and/or rotate, 1 or none leaves the
  pixels; a mask file with the tag is turned the same way, so it lines up with its image as
  displayed). ``exif_transpose=False`` keeps the stored pixel order.
- **Pixel limit.** Pillow refuses images above twice ``PIL.Image.MAX_IMAGE_PIXELS`` (89.5 M
  pixels; a "decompression bomb" guard). ``max_image_pixels`` raises (or lowers) it for trusted
  huge tiles: images above it are refused. Pillow's limit is a module global read at decode
  time, so it is set for the decode call in the process that decodes (under a lock), never on
  a driver only.
- **Pixel values.** ``"uint8"`` converts every image to 8-bit grayscale or RGB (what models
  saved before preprocessing schemes take); ``"native"`` keeps the file's own dtype and
  channels (`unet_core.preprocessing`). The model's preprocessing decides.
"""

from __future__ import annotations

import contextlib
import io
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

__all__ = [
    "DecodeOptions",
    "ImageDecodeError",
    "ImageTooLargeError",
    "image_header",
    "open_image",
    "orient_array",
    "over_limit",
    "too_large_error",
    "unreadable_error",
]

LIMIT_FLAG = "--max-image-pixels"
"""The jobs' flag that sets `DecodeOptions.max_image_pixels` (named in the error)."""
_ORIENTATION = ExifTags.Base.Orientation  # 0x0112
_SWAPS_AXES = frozenset({5, 6, 7, 8})
"""Orientations that rotate by 90 degrees (or transpose): the displayed size is H x W."""


class ImageDecodeError(ValueError):
    """A file is not a readable image (corrupt, truncated, empty, too large, or not an image)."""


class ImageTooLargeError(ImageDecodeError):
    """An image has more pixels than the limit (`DecodeOptions.max_image_pixels`)."""


@dataclass(frozen=True, kw_only=True)
class DecodeOptions:
    """How encoded files become pixels (the same for images and masks)."""

    exif_transpose: bool = True
    """Apply the EXIF orientation tag as viewers do; False keeps the stored pixel order."""
    max_image_pixels: int | None = None
    """Refuse images with more pixels (width x height) than this; None = Pillow's limit
    (refused above twice ``PIL.Image.MAX_IMAGE_PIXELS``, a warning above it)."""
    pixel_values: str = "uint8"
    """Images as "uint8" (8-bit grayscale or RGB, converted: what legacy models take) or
    "native" (the file's own dtype and channels: `unet_core.preprocessing.read_array`); set
    from the model's `unet_core.config.Preprocessing.pixel_values`. Masks ignore it."""

    def __post_init__(self) -> None:
        if self.pixel_values not in ("uint8", "native"):
            raise ValueError(f"pixel_values must be 'uint8' or 'native', got {self.pixel_values!r}")
        if self.max_image_pixels is not None and self.max_image_pixels < 1:
            raise ValueError(
                f"max_image_pixels must be >= 1 (or None for Pillow's limit), got "
                f"{self.max_image_pixels}"
            )


DEFAULT_OPTIONS = DecodeOptions()

_LIMIT_LOCK = threading.Lock()


@contextlib.contextmanager
def _pixel_limit(limit: int | None) -> Iterator[None]:
    """Pillow's check reads the module global while it opens (and, for some formats, loads):
    set it for this decode only. Decodes with a limit of their own take turns; one with
    Pillow's limit running meanwhile in another thread may see the raised one."""
    if limit is None:
        yield
        return
    with _LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = limit  # Pillow raises only above 2 x limit; we above limit
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def too_large_error(source: str, kind: str, size: str, limit: int | None) -> ImageTooLargeError:
    """The refusal of an image above the pixel limit (``size`` in words), naming the flag."""
    if limit is None:
        return ImageTooLargeError(
            f"{source}: {kind} is too large to decode safely ({size}; Pillow refuses more than "
            f"twice PIL.Image.MAX_IMAGE_PIXELS as a possible decompression bomb); if you trust "
            f"the file, raise the limit with {LIMIT_FLAG} N (N at least its width x height), "
            "or split it into tiles"
        )
    return ImageTooLargeError(
        f"{source}: {kind} is too large to decode ({size}, above {LIMIT_FLAG} {limit}); if "
        f"you trust the file, raise {LIMIT_FLAG}, or split it into tiles"
    )


def unreadable_error(source: str, kind: str, exc: BaseException) -> ImageDecodeError:
    """A corrupt, truncated or unknown file, by name, with the decoder's reason."""
    reason = (
        "not a recognised image format"
        if isinstance(exc, UnidentifiedImageError)
        else f"{type(exc).__name__}: {exc}"
    )
    return ImageDecodeError(
        f"{source}: cannot decode {kind} ({reason}); the file is "
        "corrupt, truncated or not an image: re-export or remove it"
    )


def _bomb(
    exc: Image.DecompressionBombError, source: str, kind: str, limit: int | None
) -> ImageTooLargeError:
    """Pillow's own refusal (while opening), in our words: the pixels it counted."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    return too_large_error(source, kind, f"{found[1]} pixels" if found else str(exc), limit)


def _check_size(img: Image.Image, source: str, kind: str, limit: int | None) -> None:
    pixels = img.width * img.height
    if limit is not None and pixels > limit:
        raise too_large_error(source, kind, f"{img.width}x{img.height} = {pixels} pixels", limit)


def over_limit(height: int, width: int, options: DecodeOptions = DEFAULT_OPTIONS) -> bool:
    """Whether an image of this size is refused (``options.max_image_pixels``, else Pillow's
    refusal above twice ``PIL.Image.MAX_IMAGE_PIXELS``)."""
    limit = options.max_image_pixels
    if limit is None:
        pillow = Image.MAX_IMAGE_PIXELS
        return pillow is not None and height * width > 2 * pillow
    return height * width > limit


def orientation(img: Image.Image, *, header_only: bool = False) -> int:
    """The EXIF orientation (1-8) of an opened image; 1 when absent, invalid or unreadable
    (viewers ignore a damaged EXIF block too). ``header_only``: from what opening read, without
    decoding pixels (a PNG's ``getexif`` would load the whole image to look past its data)."""
    try:
        exif = Image.Image.getexif(img) if header_only else img.getexif()
        value = exif.get(_ORIENTATION, 1)
    except Exception:  # a malformed EXIF block: the pixels are still fine
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def orient_array(image: np.ndarray, orientation: int) -> np.ndarray:
    """An (H, W, ...) array turned by an EXIF/TIFF orientation (1-8) as
    ``PIL.ImageOps.exif_transpose`` turns an image: for arrays Pillow cannot hold (multi-band,
    16-bit colour, float)."""
    turned = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, k=-1),
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
        8: lambda a: np.rot90(a, k=1),
    }.get(orientation)
    return image if turned is None else np.ascontiguousarray(turned(image))


def open_image(
    data: bytes, *, source: str, kind: str = "image", options: DecodeOptions = DEFAULT_OPTIONS
) -> tuple[Image.Image, int]:
    """Open and fully decode (``load``) so corrupt or truncated files fail here, by name; turn
    the pixels by the EXIF orientation (unless ``options.exif_transpose`` is off). Returns the
    image and the orientation applied (1 when none)."""
    if not data:
        raise ImageDecodeError(f"{source}: empty file (0 bytes); re-export or remove it")
    limit = options.max_image_pixels
    try:
        with _pixel_limit(limit):
            img = Image.open(io.BytesIO(data))
            _check_size(img, source, kind, limit)
            img.load()
    except ImageTooLargeError:
        raise
    except Image.DecompressionBombError as exc:
        raise _bomb(exc, source, kind, limit) from exc
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, EOFError, ...)
        raise unreadable_error(source, kind, exc) from exc
    applied = orientation(img) if options.exif_transpose else 1
    if applied != 1:
        fmt = img.format
        img = ImageOps.exif_transpose(img)
        img.format = fmt  # callers read the format (a JPEG mask gets its own hint)
    return img, applied


def image_header(
    data: bytes, *, source: str, options: DecodeOptions = DEFAULT_OPTIONS
) -> tuple[str, int, int]:
    """(mode, height, width) of an image as it will be decoded (displayed size, by the EXIF
    orientation unless off), from its header: no pixel decode, so ``data`` may be the first
    bytes of the file. Raises ImageTooLargeError above the limit, and what Pillow raises for a
    header it cannot read (UnidentifiedImageError, OSError, SyntaxError, ValueError)."""
    limit = options.max_image_pixels
    try:
        with _pixel_limit(limit), Image.open(io.BytesIO(data)) as img:
            _check_size(img, source, "image", limit)
            turned = options.exif_transpose and orientation(img, header_only=True) in _SWAPS_AXES
            width, height = (img.height, img.width) if turned else img.size
            return img.mode, height, width
    except Image.DecompressionBombError as exc:
        raise _bomb(exc, source, "image", limit) from exc
