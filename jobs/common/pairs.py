"""One reader of labelled image/mask pairs, for every stage that reads them: the training data
checks, class counting, the training datasets and samples, the alias gate, and the evaluate
job's truth masks.

Bytes are read through the filesystem factory (local or s3://) and a failed read is an OSError
naming the file; the image is decoded by the job's `DecodeOptions` (EXIF orientation, pixel
limit) to HxWxC uint8; the mask through the class map to HxW class indices (a value outside the
map is a `MaskValueError` naming the file and the value); a mask of another size than its image
is a ValueError naming both. `read_pairs` reads a batch and returns the pairs that failed as
{image URI: error} instead of raising, for the callers that leave bad pairs out.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from jobs.common import fs
from unet_core.classes import ClassMap
from unet_core.data import Pair, decode_image, decode_mask
from unet_core.image_files import DEFAULT_OPTIONS, DecodeOptions


def pair_items(root: str, pairs: list[Pair]) -> list[dict[str, str]]:
    """One row per pair with absolute URIs (workers run elsewhere, with another cwd)."""
    root = fs.absolute(root)
    return [
        {"key": p.key, "image": fs.join(root, p.image), "mask": fs.join(root, p.mask)}
        for p in pairs
    ]


def read_file(uri: str, endpoint_url: str | None = None) -> bytes:
    """The file's bytes; a failed read raises an OSError whose message starts with the URI."""
    try:
        return fs.read_bytes(uri, endpoint_url=endpoint_url)
    except OSError as exc:  # the filesystem's message does not always name the file
        raise OSError(f"{uri}: cannot read ({type(exc).__name__}: {exc})") from exc


def read_image(
    uri: str,
    *,
    channels: int,
    endpoint_url: str | None = None,
    decode: DecodeOptions = DEFAULT_OPTIONS,
) -> np.ndarray:
    """The image at ``uri`` as HxWx``channels`` uint8, the right way up (``decode``)."""
    return decode_image(read_file(uri, endpoint_url), channels=channels, source=uri, options=decode)


def read_mask(
    uri: str,
    class_map: ClassMap,
    *,
    endpoint_url: str | None = None,
    decode: DecodeOptions = DEFAULT_OPTIONS,
) -> np.ndarray:
    """The mask at ``uri`` as HxW uint8 class indices (IGNORE_INDEX for ignored values)."""
    return decode_mask(read_file(uri, endpoint_url), class_map, source=uri, options=decode)


def size_mismatch(
    mask_uri: str, mask_hw: tuple[int, int], image_uri: str, image_hw: tuple[int, int]
) -> str | None:
    """The error of a mask whose (height, width) is not its image's; None when they match."""
    if tuple(mask_hw) == tuple(image_hw):
        return None
    return (
        f"{mask_uri}: mask is {mask_hw[1]}x{mask_hw[0]} but its image {image_uri} is "
        f"{image_hw[1]}x{image_hw[0]}; masks must match their images (re-export the mask at "
        "image size)"
    )


def read_pair(
    image_uri: str,
    mask_uri: str,
    class_map: ClassMap,
    *,
    channels: int,
    endpoint_url: str | None = None,
    decode: DecodeOptions = DEFAULT_OPTIONS,
) -> tuple[np.ndarray, np.ndarray]:
    """(HxWxC image, HxW class indices); OSError or ValueError naming the file that failed."""
    image = read_image(image_uri, channels=channels, endpoint_url=endpoint_url, decode=decode)
    mask = read_mask(mask_uri, class_map, endpoint_url=endpoint_url, decode=decode)
    error = size_mismatch(mask_uri, mask.shape, image_uri, image.shape[:2])
    if error:
        raise ValueError(error)
    return image, mask


def read_pairs(
    items: Iterable[dict[str, str]] | dict[str, np.ndarray],
    class_map: ClassMap,
    *,
    channels: int,
    endpoint_url: str | None = None,
    decode: DecodeOptions = DEFAULT_OPTIONS,
) -> tuple[dict[str, list], dict[str, str]]:
    """Read a batch of pairs (`pair_items` rows, or a Ray Data numpy batch of their columns):
    ({"key", "image", "mask"} lists of those that decoded, {image URI: error naming the file}
    of those that did not)."""
    if isinstance(items, dict):  # columns -> rows
        items = [
            {"key": k, "image": i, "mask": m}
            for k, i, m in zip(items["key"], items["image"], items["mask"], strict=True)
        ]
    out: dict[str, list] = {"key": [], "image": [], "mask": []}
    errors: dict[str, str] = {}
    for item in items:
        image_uri, mask_uri = str(item["image"]), str(item["mask"])
        try:
            image, mask = read_pair(
                image_uri,
                mask_uri,
                class_map,
                channels=channels,
                endpoint_url=endpoint_url,
                decode=decode,
            )
        except (OSError, ValueError) as exc:  # decode errors are ValueErrors naming the file
            errors[image_uri] = str(exc)
            continue
        out["key"].append(str(item["key"]))
        out["image"].append(image)
        out["mask"].append(mask)
    return out, errors
