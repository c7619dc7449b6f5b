"""The data contract: `images/` and `masks/` under a root, paired by relative path and stem.

``images/a/b.jpg`` pairs with ``masks/a/b.png`` (key ``a/b``), never by listing order. Listing
goes through a `Lister` (folder -> relative file paths), so a local folder and an S3 prefix
pair with the same function. Decoding turns bytes into arrays with errors that name the file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unet_core.classes import CLASS_MAP_FILENAME, ClassMap, MaskValueError
from unet_core.image_decode import (
    SIXTEEN_BIT_MODES,
    decode_image,
    decode_image_oriented,
    read_image,
)
from unet_core.image_files import (
    DEFAULT_OPTIONS,
    DecodeOptions,
    ImageDecodeError,
    ImageTooLargeError,
    open_image,
)
from unet_core.messages import shorten

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
"""Extensions of image and mask files (compared lower-case); other files are ignored."""
IMAGES_DIR = "images"
MASKS_DIR = "masks"

Lister = Callable[[str], list[str]]
"""Given a folder relative to the data root ("images"), return the paths of the files under it
relative to that folder (posix separators, recursive); [] when it does not exist."""

__all__ = [
    "IMAGE_EXTENSIONS",
    "DecodeOptions",
    "ImageDecodeError",
    "ImageTooLargeError",
    "Lister",
    "MaskValueError",
    "Pair",
    "PairingError",
    "decode_image",
    "decode_image_oriented",
    "decode_mask",
    "load_class_map",
    "local_lister",
    "pair_group",
    "pair_images_and_masks",
    "read_image",
    "read_mask",
    "split_pairs",
]


class PairingError(ValueError):
    """Images and masks under a root do not pair one to one."""

    exit_kind = "data"  # the jobs refuse such data with exit code 2


@dataclass(frozen=True)
class Pair:
    image: str
    """Root-relative posix path, e.g. ``images/a/b.jpg``."""
    mask: str
    """Root-relative posix path, e.g. ``masks/a/b.png``."""
    key: str
    """Relative path without extension, e.g. ``a/b``: the identity of the case."""


# --- listing and pairing ---------------------------------------------------------------------
def local_lister(root: str | Path) -> Lister:
    """A Lister over a local folder (follows symlinked folders; skips hidden folders)."""
    root = Path(root)

    def lister(folder: str) -> list[str]:
        base = root / folder
        if not base.is_dir():
            return []
        out = []
        for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel_dir = Path(dirpath).relative_to(base).as_posix()
            prefix = "" if rel_dir == "." else rel_dir + "/"
            out.extend(prefix + name for name in filenames)
        return sorted(out)

    return lister


def is_image_file(rel: str) -> bool:
    """True for a non-hidden file with an image extension (case-insensitive)."""
    if any(part.startswith(".") for part in rel.split("/")):
        return False
    return posixpath.splitext(rel)[1].lower() in IMAGE_EXTENSIONS


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _key_files(files: list[str], folder: str) -> tuple[dict[str, list[str]], list[str]]:
    """key -> files (root-relative) for the image files; and the non-image files skipped."""
    keyed: dict[str, list[str]] = {}
    skipped = []
    for rel in files:
        if is_image_file(rel):
            keyed.setdefault(posixpath.splitext(rel)[0], []).append(f"{folder}/{rel}")
        elif not any(part.startswith(".") for part in rel.split("/")):
            skipped.append(f"{folder}/{rel}")
    return keyed, skipped


def _empty_error(root: str, folder: str, skipped: list[str]) -> PairingError:
    what = "images" if folder == IMAGES_DIR else "masks (one per image)"
    msg = f"{root}: {folder}/ is missing or holds no image files"
    if skipped:
        msg += (
            f" ({_plural(len(skipped), 'file', 'files')} with other extensions: {shorten(skipped)})"
        )
    return PairingError(
        f"{msg}. A labelled data root holds images/ and masks/ side by side; put the {what} "
        f"under {root}/{folder}/ as {'/'.join(sorted(IMAGE_EXTENSIONS))} files, or point the "
        "data root at the folder that contains images/ and masks/."
    )


def pair_images_and_masks(root: str | Path, *, lister: Lister | None = None) -> list[Pair]:
    """Pair ``images/<key>.<ext>`` with ``masks/<key>.<ext>``; sorted by key.

    Hidden files (any path part starting with '.') and non-image extensions are ignored.
    Raises PairingError naming the files (the first ten and a count) when ``images/`` or
    ``masks/`` is missing or empty, an image has no mask, a mask has no image, or two files in
    one folder share a key (``a.png`` and ``a.jpg``).
    """
    root_s = str(root).rstrip("/") or "/"
    lister = lister or local_lister(root)
    images, skipped_images = _key_files(lister(IMAGES_DIR), IMAGES_DIR)
    masks, skipped_masks = _key_files(lister(MASKS_DIR), MASKS_DIR)
    if not images:
        raise _empty_error(root_s, IMAGES_DIR, skipped_images)
    if not masks:
        raise _empty_error(root_s, MASKS_DIR, skipped_masks)

    problems = []
    duplicates = [
        " and ".join(sorted(files))
        for keyed in (images, masks)
        for _, files in sorted(keyed.items())
        if len(files) > 1
    ]
    if duplicates:
        problems.append(
            f"{_plural(len(duplicates), 'key has', 'keys have')} more than one file "
            f"({shorten(duplicates)}): keep one file per stem in each folder"
        )
    no_mask = [images[k][0] for k in sorted(set(images) - set(masks))]
    if no_mask:
        problems.append(
            f"{_plural(len(no_mask), 'image has', 'images have')} no mask: {shorten(no_mask)}"
        )
    no_image = [masks[k][0] for k in sorted(set(masks) - set(images))]
    if no_image:
        problems.append(
            f"{_plural(len(no_image), 'mask has', 'masks have')} no image: {shorten(no_image)}"
        )
    if problems:
        raise PairingError(
            f"{root_s}: images and masks do not pair one to one. "
            + "; ".join(problems)
            + ". Each image needs exactly one mask with the same relative path and stem "
            "(images/a/b.jpg <-> masks/a/b.png): add, rename or remove the files named."
        )
    pairs = [Pair(image=images[k][0], mask=masks[k][0], key=k) for k in sorted(images)]
    logger.debug("%s: %d image/mask pairs", root_s, len(pairs))
    return pairs


# --- splitting ------------------------------------------------------------------------------
def _unit_hash(seed: int, key: str) -> float:
    """A number in [0, 1) fixed by (seed, key) alone: the split of a key never changes."""
    digest = hashlib.sha1(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def pair_group(key: str, group_by: str | re.Pattern[str] | Mapping[str, str] | None) -> str:
    """The group of a case: the first group of ``group_by``'s match in the key (the whole match
    when the pattern has no group); with a mapping (key -> group, e.g. the name groups of
    `jobs.planning.names`), the key's entry; the key itself without a pattern or a match."""
    if group_by is None:
        return key
    if isinstance(group_by, Mapping):
        return group_by.get(key, key)
    found = re.search(group_by, key)
    if found is None:
        return key
    return found.group(1) if found.re.groups else found.group(0)


def split_pairs(
    pairs: Sequence[Pair],
    *,
    val_fraction: float,
    seed: int = 0,
    group_by: str | re.Pattern[str] | Mapping[str, str] | None = None,
) -> tuple[list[Pair], list[Pair]]:
    """Deterministic (train, val) split by a hash of (seed, group), both sorted by key.

    A case's group is its key, or with ``group_by`` (a regular expression) `pair_group`: the
    frames of one sequence, the slices of one stack. A group goes to val when
    sha1(f"{seed}:{group}") as a number in [0, 1) is below ``val_fraction``, so a whole group is
    on one side and never changes side when the folder grows. With >= 2 groups and
    ``val_fraction > 0``, neither side is left empty (the lowest-hash group moves to val, or the
    highest-hash one to train) — the only case where a group's side depends on the others.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ordered = sorted(pairs, key=lambda p: p.key)
    if val_fraction == 0 or not ordered:
        return ordered, []
    groups = {p.key: pair_group(p.key, group_by) for p in ordered}
    scores = {g: _unit_hash(seed, g) for g in set(groups.values())}
    val_groups = {g for g, s in scores.items() if s < val_fraction}
    if len(scores) >= 2:
        by_score = sorted(scores, key=lambda g: (scores[g], g))
        if not val_groups:
            val_groups = {by_score[0]}
        elif len(val_groups) == len(scores):
            val_groups.discard(by_score[-1])
    train = [p for p in ordered if groups[p.key] not in val_groups]
    val = [p for p in ordered if groups[p.key] in val_groups]
    return train, val


# --- decoding -------------------------------------------------------------------------------
def decode_mask(
    data: bytes,
    class_map: ClassMap,
    *,
    source: str = "<mask>",
    options: DecodeOptions = DEFAULT_OPTIONS,
) -> np.ndarray:
    """Encoded mask -> HxW uint8 class indices (IGNORE_INDEX for ignored values).

    Palette (P) PNGs are read as their indices, never converted to colours; L, I;16 and I
    masks as values (8- or 16-bit); 1-bit masks as 0/255 (as Pillow's ``convert("L")``);
    RGB/RGBA masks only when their colour channels are equal (alpha is ignored). A mask file
    with an EXIF orientation is turned by it like an image (so it lines up with its image as
    displayed), unless ``options.exif_transpose`` is off; most masks (PNG) carry none.
    """
    img, _ = open_image(data, source=source, kind="mask", options=options)
    mode = img.mode
    arr = np.asarray(img)
    if mode == "1":
        arr = arr.astype(np.uint8) * 255
    elif mode in ("LA", "PA"):
        arr = arr[:, :, 0]
    elif mode in ("RGB", "RGBA", "RGBX"):
        rgb = arr[:, :, :3]
        if not (
            np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
        ):
            colours = np.unique(rgb.reshape(-1, 3), axis=0)
            shown = ", ".join(str(tuple(int(x) for x in c)) for c in colours[:5])
            more = f" ... ({len(colours)} in all)" if len(colours) > 5 else ""
            raise MaskValueError(
                f"{source}: colour (RGB) mask with colours {shown}{more}; masks must hold one "
                "class value per pixel: save them as single-channel (L or 16-bit) or palette "
                "PNGs whose values are listed in the class map"
            )
        arr = rgb[:, :, 0]
    elif mode not in ("P", "L", "I", "F", *SIXTEEN_BIT_MODES):
        raise MaskValueError(
            f"{source}: unsupported mask mode {mode}; save masks as 8/16-bit single-channel "
            "or palette PNGs"
        )
    try:
        return class_map.decode(arr, source=source)
    except MaskValueError as exc:
        if img.format == "JPEG":
            raise MaskValueError(
                f"{exc} (JPEG compression changes mask values: save masks as PNG)"
            ) from exc
        raise


def read_mask(
    path: str | Path, class_map: ClassMap, *, options: DecodeOptions = DEFAULT_OPTIONS
) -> np.ndarray:
    """``decode_mask`` of a local file."""
    return decode_mask(Path(path).read_bytes(), class_map, source=str(path), options=options)


def load_class_map(root: str | Path, class_map_path: str | Path | None = None) -> ClassMap:
    """The class map at ``class_map_path`` if given, else ``<root>/classes.json`` (local)."""
    if class_map_path is not None:
        return ClassMap.from_file(class_map_path)
    path = Path(root) / CLASS_MAP_FILENAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{root}: no {CLASS_MAP_FILENAME} at the data root; add one (class names, the mask "
            "value of each class, ignore_values) or pass --class-map FILE"
        )
    return ClassMap.from_file(path)
