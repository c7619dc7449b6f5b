"""The data contract: `images/` and `masks/` under a root, paired by relative path and stem."""

from __future__ import annotations

import hashlib
import io
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from unet_core.classes import CLASS_MAP_FILENAME, ClassMap, MaskValueError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
IMAGES_DIR = "images"
MASKS_DIR = "masks"

Lister = Callable[[str], list[str]]
"""Given a folder relative to the data root ("images"), return the relative paths (posix,
recursive) of the files under it; [] when it does not exist. Local and S3 listers share it."""

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageDecodeError",
    "Lister",
    "MaskValueError",
    "Pair",
    "PairingError",
    "decode_image",
    "decode_mask",
    "load_class_map",
    "local_lister",
    "pair_images_and_masks",
    "read_image",
    "read_mask",
    "split_pairs",
]


class PairingError(ValueError):
    """Images and masks under a root do not pair one to one."""


class ImageDecodeError(ValueError):
    """A file is not a readable image (corrupt, truncated, empty, or not an image)."""


@dataclass(frozen=True)
class Pair:
    image: str
    """Root-relative posix path, e.g. ``images/a/b.jpg``."""
    mask: str
    """Root-relative posix path, e.g. ``masks/a/b.png``."""
    key: str
    """Relative path without extension, e.g. ``a/b``: the identity of the case."""


def local_lister(root: str | Path) -> Lister:
    root = Path(root)

    def lister(folder: str) -> list[str]:
        base = root / folder
        if not base.is_dir():
            return []
        return sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())

    return lister


def _is_image(rel: str) -> bool:
    parts = rel.split("/")
    if any(part.startswith(".") for part in parts):
        return False
    return posixpath.splitext(rel)[1].lower() in IMAGE_EXTENSIONS


def _by_key(files: list[str], folder: str, root: str) -> dict[str, str]:
    keyed: dict[str, list[str]] = {}
    for rel in files:
        if _is_image(rel):
            keyed.setdefault(posixpath.splitext(rel)[0], []).append(rel)
    dups = {k: v for k, v in keyed.items() if len(v) > 1}
    if dups:
        shown = "; ".join(
            " and ".join(f"{folder}/{f}" for f in v) for _, v in sorted(dups.items())[:10]
        )
        raise PairingError(
            f"{root}: {len(dups)} stems appear more than once in {folder}/ ({shown}); "
            "keep one file per stem"
        )
    return {k: v[0] for k, v in keyed.items()}


def _listing(names: list[str], limit: int = 10) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def pair_images_and_masks(root: str | Path, *, lister: Lister | None = None) -> list[Pair]:
    """Pair ``images/<key>.<ext>`` with ``masks/<key>.<ext>``; sorted by key.

    Raises PairingError naming the files when a folder is missing or empty, an image has no
    mask, a mask has no image, or two files in one folder share a stem.
    """
    root_s = str(root)
    lister = lister or local_lister(root)
    images = _by_key(lister(IMAGES_DIR), IMAGES_DIR, root_s)
    masks = _by_key(lister(MASKS_DIR), MASKS_DIR, root_s)
    if not images:
        raise PairingError(
            f"{root_s}: no images found under {IMAGES_DIR}/ (extensions "
            f"{sorted(IMAGE_EXTENSIONS)}); a data root holds images/ and masks/"
        )
    if not masks:
        raise PairingError(
            f"{root_s}: no masks found under {MASKS_DIR}/; a labelled root "
            "holds masks/ with one mask per image, same relative path and stem"
        )
    no_mask = sorted(set(images) - set(masks))
    no_image = sorted(set(masks) - set(images))
    problems = []
    if no_mask:
        problems.append(
            f"{len(no_mask)} images have no mask: "
            + _listing([f"{IMAGES_DIR}/{images[k]}" for k in no_mask])
        )
    if no_image:
        problems.append(
            f"{len(no_image)} masks have no image: "
            + _listing([f"{MASKS_DIR}/{masks[k]}" for k in no_image])
        )
    if problems:
        raise PairingError(
            f"{root_s}: "
            + "; ".join(problems)
            + ". Each image needs a mask with the same relative path and stem "
            "(images/a/b.jpg <-> masks/a/b.png): add or remove the files named."
        )
    return [
        Pair(image=f"{IMAGES_DIR}/{images[k]}", mask=f"{MASKS_DIR}/{masks[k]}", key=k)
        for k in sorted(images)
    ]


def _unit_hash(seed: int, key: str) -> float:
    digest = hashlib.sha1(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_pairs(
    pairs: list[Pair], *, val_fraction: float, seed: int = 0
) -> tuple[list[Pair], list[Pair]]:
    """Deterministic train/val split by a hash of the key: a case never changes side when the
    folder grows. When val_fraction > 0 and there are >= 2 pairs, val is never empty."""
    if val_fraction <= 0:
        return list(pairs), []
    scored = sorted(pairs, key=lambda p: _unit_hash(seed, p.key))
    val = [p for p in scored if _unit_hash(seed, p.key) < val_fraction]
    if not val and len(pairs) >= 2:
        val = scored[:1]
    val_keys = {p.key for p in val}
    train = [p for p in pairs if p.key not in val_keys]
    return train, sorted(val, key=lambda p: p.key)


def _open(data: bytes, source: str, kind: str) -> Image.Image:
    if not data:
        raise ImageDecodeError(f"{source}: empty file (0 bytes); re-export or remove it")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()  # decode now, so truncated files fail here and not later
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(
            f"{source}: {exc}; tile the image or raise PIL.Image.MAX_IMAGE_PIXELS"
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(
            f"{source}: cannot decode {kind} ({type(exc).__name__}: {exc}); the file is corrupt, "
            "truncated or not an image"
        ) from exc
    return img


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit/int/float grayscale -> 8-bit L, scaled by the type's range."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16") or (img.mode == "I" and arr.max(initial=0) > 255):
        arr = arr.astype(np.float64) / (65535.0 if arr.max(initial=0) <= 65535 else arr.max())
        return Image.fromarray(np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if img.mode == "F":
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        return Image.fromarray(np.clip((arr - lo) * scale + 0.5, 0, 255).astype(np.uint8))
    return Image.fromarray(arr.astype(np.uint8))


def decode_image(data: bytes, *, channels: int, source: str = "<image>") -> np.ndarray:
    """Encoded bytes -> HxWxC uint8 with C = ``channels`` (1 or 3).

    Palette, CMYK, alpha (dropped), 1-bit and 16-bit inputs are converted; RGB becomes
    luminance for 1-channel models, grayscale is replicated for 3-channel models.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    img = _open(data, source, "image")
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        img = _to_8bit(img)
    elif img.mode == "LA":
        img = img.getchannel("L")
    elif img.mode in ("PA",):
        img = img.convert("RGBA")
    target = "L" if channels == 1 else "RGB"
    if img.mode != target:
        img = img.convert(target)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr


def decode_mask(data: bytes, class_map: ClassMap, *, source: str = "<mask>") -> np.ndarray:
    """Encoded mask -> HxW uint8 class indices (IGNORE_INDEX for ignored values).

    Palette PNGs are read as their indices (never converted to colours); 8/16-bit grayscale
    as values; an RGB mask is accepted only when its channels are equal.
    """
    img = _open(data, source, "mask")
    if img.mode in ("P", "L", "1", "I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img)
        if img.mode == "1":
            arr = arr.astype(np.uint8) * 255
    elif img.mode in ("RGB", "RGBA", "LA", "PA"):
        arr = np.asarray(img)
        if img.mode in ("LA", "PA"):
            arr = arr[..., 0]
        else:
            rgb = arr[..., :3]
            if not (
                np.array_equal(rgb[..., 0], rgb[..., 1])
                and np.array_equal(rgb[..., 0], rgb[..., 2])
            ):
                raise MaskValueError(
                    f"{source}: colour (RGB) masks are not supported; save masks as "
                    "single-channel PNGs of class values or as palette PNGs"
                )
            arr = rgb[..., 0]
    else:
        raise MaskValueError(
            f"{source}: unsupported mask mode {img.mode}; save masks as "
            "8/16-bit single-channel or palette PNGs"
        )
    if arr.dtype.kind == "i":
        arr = arr.astype(np.int64)
    return class_map.decode(arr, source=source)


def read_image(path: str | Path, *, channels: int) -> np.ndarray:
    return decode_image(Path(path).read_bytes(), channels=channels, source=str(path))


def read_mask(path: str | Path, class_map: ClassMap) -> np.ndarray:
    return decode_mask(Path(path).read_bytes(), class_map, source=str(path))


def load_class_map(root: str | Path, class_map_path: str | Path | None = None) -> ClassMap:
    """The class map given, else ``<root>/classes.json`` (local roots)."""
    if class_map_path is not None:
        return ClassMap.from_file(class_map_path)
    path = Path(root) / CLASS_MAP_FILENAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{root}: no {CLASS_MAP_FILENAME} at the data root; add one or pass "
            "--class-map FILE (see README: class map format)"
        )
    return ClassMap.from_file(path)


def image_channels(data: bytes, *, source: str = "<image>") -> int:
    """Channel count from the header only (no full decode): 1 for grayscale, 3 for colour."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            mode = img.mode
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageDecodeError(f"{source}: cannot read the image header ({exc})") from exc
    return 1 if mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F") else 3
