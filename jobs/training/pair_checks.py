"""One image/mask pair checked before training (`jobs.training.data_checks`): the image's
header (mode, and size as decoded: by its EXIF orientation unless --no-exif-transpose; no
pixel decode) and the whole mask (read, decoded and mapped through the class map by
`jobs.common.pairs`, the reader of every labelled pair)."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from PIL import UnidentifiedImageError

from jobs.common import fs
from jobs.common.pairs import read_mask, size_mismatch
from unet_core.classes import ClassMap
from unet_core.data import ImageDecodeError, MaskValueError, Pair
from unet_core.image_files import DEFAULT_OPTIONS, DecodeOptions, over_limit
from unet_core.preprocessing import array_header

HEADER_BYTES = 64 * 1024


@dataclass(frozen=True)
class PairCheck:
    """What one image/mask pair looks like, or what is wrong with it."""

    key: str
    image: str
    channels: int = 0
    """1 (grayscale) or 3 (colour) from the image header; 0 when unreadable."""
    height: int = 0
    width: int = 0
    problem: str = ""
    """Empty when the pair is fine; else a message naming the file."""
    kind: str = ""
    """Problem category: image, mask_values, mask, size."""


def image_header(
    read_prefix, read_all, source: str, decode: DecodeOptions = DEFAULT_OPTIONS
) -> tuple[int, int, int]:
    """(channels, height, width) from the header, as decoded (`TrainingData.decode`); falls back
    to the whole file when the header is not within the first 64 KiB (e.g. TIFF directories
    at the end of the file)."""
    # A header decodes no pixels: read it whatever the limit (training refuses the image).
    options = DecodeOptions(exif_transpose=decode.exif_transpose, max_image_pixels=sys.maxsize)
    for reader in (read_prefix, read_all):
        data = reader()
        if not data:
            raise ImageDecodeError(f"{source}: empty file (0 bytes); re-export or remove it")
        try:  # channels as the images decode for any model (`read_array`: TIFF bands too)
            return array_header(data, source=source, options=options)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            error = exc
    raise ImageDecodeError(
        f"{source}: not a readable image ({type(error).__name__}: {error}); the file is corrupt, "
        "truncated or not an image"
    )


def check_pair(
    root: str,
    pair: Pair,
    class_map: ClassMap,
    *,
    endpoint_url: str | None = None,
    decode: DecodeOptions = DEFAULT_OPTIONS,
) -> PairCheck:
    """Header of the image, full decode of the mask (not of one whose image is above the pixel
    limit: training leaves that pair out); never raises for a bad file."""
    filesystem, base = fs.resolve(root, endpoint_url=endpoint_url)
    image_uri, mask_uri = fs.join(root, pair.image), fs.join(root, pair.mask)
    image_path = f"{base.rstrip('/')}/{pair.image}"

    def prefix() -> bytes:
        with filesystem.open_input_file(image_path) as f:
            return f.read(HEADER_BYTES)

    def whole() -> bytes:
        with filesystem.open_input_stream(image_path) as f:
            return f.read()

    try:
        channels, h, w = image_header(prefix, whole, image_uri, decode)
    except (ImageDecodeError, OSError) as exc:
        return PairCheck(pair.key, pair.image, problem=str(exc), kind="image")
    if over_limit(h, w, decode):
        return PairCheck(pair.key, pair.image, channels, h, w)
    try:
        mask = read_mask(mask_uri, class_map, endpoint_url=endpoint_url, decode=decode)
    except MaskValueError as exc:
        return PairCheck(pair.key, pair.image, channels, h, w, problem=str(exc), kind="mask_values")
    except (ImageDecodeError, OSError) as exc:
        return PairCheck(pair.key, pair.image, channels, h, w, problem=str(exc), kind="mask")
    mismatch = size_mismatch(mask_uri, mask.shape, image_uri, (h, w))
    if mismatch:
        return PairCheck(pair.key, pair.image, channels, h, w, problem=mismatch, kind="size")
    return PairCheck(pair.key, pair.image, channels, h, w)


def check_pairs(
    root: str,
    pairs: list[Pair],
    class_map: ClassMap,
    *,
    endpoint_url: str | None = None,
    threads: int = 8,
    decode: DecodeOptions = DEFAULT_OPTIONS,
) -> list[PairCheck]:
    """`check_pair` over many pairs with a thread pool (I/O bound on S3)."""

    def check(p: Pair) -> PairCheck:
        return check_pair(root, p, class_map, endpoint_url=endpoint_url, decode=decode)

    if len(pairs) < 4:
        return [check(p) for p in pairs]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(check, pairs))
