"""Class maps: class names, the mask pixel value of each class, ignored values, colours.

A class map is read from ``classes.json`` (at the data root or any path)::

    {"classes": [{"name": "membrane", "value": 0, "color": [255, 0, 0]},
                 {"name": "cell", "value": 255, "color": [0, 0, 255]}],
     "ignore_values": []}

Class ``i`` is the i-th entry. ``value`` is the pixel value that encodes the class in mask files
(8- or 16-bit); pixels holding an ``ignore_values`` entry become IGNORE_INDEX (255) and count in
no loss and no metric. ``color`` is optional (a distinct default palette fills it). Extra keys
are allowed and ignored.
"""

from __future__ import annotations

import colorsys
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from unet_core.config import IGNORE_INDEX
from unet_core.messages import shorten_values

CLASS_MAP_FILENAME = "classes.json"
MAX_CLASSES = IGNORE_INDEX - 1  # indices 0..253 are classes, 255 is ignore: 254 classes at most
MAX_VALUE = 65535  # masks are 8- or 16-bit

_FORMAT_HINT = (
    '{"classes": [{"name": "background", "value": 0, "color": [0, 0, 0]}, '
    '{"name": "object", "value": 255}], "ignore_values": []}'
)

# Distinct colours for the first classes (background black); more are spread over hues.
_BASE_PALETTE = (
    (0, 0, 0),
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
)


class MaskValueError(ValueError):
    """A mask holds pixel values that map to no class (or cannot be read as class values)."""


def default_palette(n: int) -> np.ndarray:
    """(n, 3) uint8 distinct display colours: a fixed list, then golden-ratio spaced hues."""
    colours = list(_BASE_PALETTE[:n])
    for i in range(len(colours), n):
        hue = (i * 0.618033988749895) % 1.0
        value = 0.95 if i % 2 else 0.7
        r, g, b = colorsys.hsv_to_rgb(hue, 0.75, value)
        colours.append((round(r * 255), round(g * 255), round(b * 255)))
    return np.asarray(colours, dtype=np.uint8).reshape(n, 3)


@dataclass(frozen=True)
class ClassInfo:
    """One class: its name, the pixel value that encodes it in masks, its display colour."""

    name: str
    value: int
    color: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class ClassMap:
    """Class ``i`` is ``classes[i]``; its pixels carry ``classes[i].value`` in mask files."""

    classes: tuple[ClassInfo, ...]
    ignore_values: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        # Accept lists, store tuples: the map stays hashable and comparable.
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "ignore_values", tuple(int(v) for v in self.ignore_values))
        n = len(self.classes)
        if n < 2:
            raise ValueError(
                f"a class map needs at least 2 classes, got {n}; a binary task is 2 classes "
                "(e.g. background value 0 and object value 255)"
            )
        if n > MAX_CLASSES:
            raise ValueError(
                f"a class map holds at most {MAX_CLASSES} classes (index {IGNORE_INDEX} marks "
                f"ignored pixels), got {n}; merge classes or move values to ignore_values"
            )
        for c in self.classes:
            if not isinstance(c.name, str) or not c.name:
                raise ValueError(f"class names must be non-empty strings, got {c.name!r}")
            if c.color is not None and (
                len(c.color) != 3 or any(not 0 <= int(x) <= 255 for x in c.color)
            ):
                raise ValueError(
                    f"class {c.name!r}: color must be [r, g, b] with 0..255 each, got {c.color!r}"
                )
        values = [c.value for c in self.classes]
        names = [c.name for c in self.classes]
        for v in [*values, *self.ignore_values]:
            if (
                isinstance(v, bool)
                or not isinstance(v, (int, np.integer))
                or not 0 <= v <= MAX_VALUE
            ):
                raise ValueError(
                    f"mask value {v!r} is not an integer in 0..{MAX_VALUE} (8- or 16-bit masks); "
                    "use the pixel value the class has in the mask files"
                )
        dup_v = sorted({v for v in values if values.count(v) > 1})
        if dup_v:
            raise ValueError(
                f"mask values {dup_v} are given to more than one class; each class needs its "
                "own value (merge the classes or fix the values)"
            )
        dup_n = sorted({n for n in names if names.count(n) > 1})
        if dup_n:
            raise ValueError(f"class names {dup_n} appear more than once; rename them")
        both = sorted(set(values) & set(self.ignore_values))
        if both:
            raise ValueError(
                f"values {both} are both a class value and an ignore value; remove them from "
                "one of the two lists"
            )

    # --- views ---------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def values(self) -> list[int]:
        return [int(c.value) for c in self.classes]

    @property
    def colors(self) -> np.ndarray:
        """(K, 3) uint8 display colours; the default palette fills the missing ones."""
        out = default_palette(self.num_classes)
        for i, c in enumerate(self.classes):
            if c.color is not None:
                out[i] = c.color
        return out

    # --- (de)serialisation ---------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "<class map>") -> ClassMap:
        """Parse ``{"classes": [{"name", "value", "color"?}, ...], "ignore_values": [...]}``."""
        try:
            entries = data["classes"]
            if not isinstance(entries, list):
                raise TypeError(f"'classes' must be a list, got {type(entries).__name__}")
            classes = tuple(_parse_class(entry) for entry in entries)
            ignore = data.get("ignore_values") or []
            if not isinstance(ignore, list):
                raise TypeError(f"'ignore_values' must be a list, got {type(ignore).__name__}")
            ignore_values = tuple(_parse_int(v, "ignore_values") for v in ignore)
        except (KeyError, TypeError, ValueError) as exc:
            reason = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ValueError(
                f"{source}: invalid class map ({reason}); expected {_FORMAT_HINT}"
            ) from exc
        try:
            return cls(classes=classes, ignore_values=ignore_values)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able form; ``from_dict(to_dict())`` gives back an equal map."""
        classes = []
        for c in self.classes:
            entry: dict[str, Any] = {"name": c.name, "value": int(c.value)}
            if c.color is not None:
                entry["color"] = [int(x) for x in c.color]
            classes.append(entry)
        return {"classes": classes, "ignore_values": [int(v) for v in self.ignore_values]}

    @classmethod
    def from_json(cls, text: str | Path, *, source: str = "<class map>") -> ClassMap:
        """Parse JSON text; a ``Path`` is read as a file (same as ``from_file``)."""
        if isinstance(text, Path):
            return cls.from_file(text)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{source}: not valid JSON ({exc}); expected {_FORMAT_HINT}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object like {_FORMAT_HINT}")
        return cls.from_dict(data, source=source)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_file(cls, path: str | Path) -> ClassMap:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"class map {path} does not exist; write a {CLASS_MAP_FILENAME} like "
                f"{_FORMAT_HINT} or pass the right --class-map FILE"
            )
        return cls.from_json(path.read_text(encoding="utf-8"), source=str(path))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def from_names(
        cls,
        names: list[str] | tuple[str, ...],
        *,
        values: list[int] | tuple[int, ...] | None = None,
        ignore_values: tuple[int, ...] | list[int] = (),
        colors: list[tuple[int, int, int] | None] | None = None,
    ) -> ClassMap:
        """Classes named in order, with values 0..K-1 unless given."""
        values = list(values) if values is not None else list(range(len(names)))
        colors = list(colors) if colors is not None else [None] * len(names)
        if not len(names) == len(values) == len(colors):
            raise ValueError(
                f"{len(names)} names, {len(values)} values and {len(colors)} colours: "
                "give one of each per class"
            )
        return cls(
            tuple(
                ClassInfo(n, int(v), tuple(c) if c is not None else None)
                for n, v, c in zip(names, values, colors, strict=True)
            ),
            tuple(ignore_values),
        )

    @classmethod
    def binary(
        cls,
        names: tuple[str, str] = ("background", "foreground"),
        values: tuple[int, int] = (0, 255),
    ) -> ClassMap:
        return cls.from_names(list(names), values=list(values))

    def __getstate__(self) -> dict[str, Any]:
        # The lookup table is a cache (128 KiB): rebuild it after unpickling, don't ship it.
        return {k: v for k, v in self.__dict__.items() if k != "_lut"}

    # --- decoding --------------------------------------------------------------------------
    @cached_property
    def _lut(self) -> np.ndarray:
        """Pixel value (0..65535) -> class index, IGNORE_INDEX, or -1 for unknown values."""
        lut = np.full(MAX_VALUE + 1, -1, dtype=np.int16)
        for i, c in enumerate(self.classes):
            lut[c.value] = i
        for v in self.ignore_values:
            lut[v] = IGNORE_INDEX
        return lut

    def decode(self, mask: np.ndarray, *, source: str = "<mask>") -> np.ndarray:
        """Pixel values (8/16-bit, any integer dtype) -> uint8 class indices, same shape.

        Ignore values become IGNORE_INDEX. Values that map to no class raise MaskValueError
        naming ``source`` and the values: an unlisted value is an error, never a silent clip.
        """
        mask = np.asarray(mask)
        if mask.dtype.kind == "f":
            if not np.all(np.isfinite(mask)) or not np.array_equal(mask, np.round(mask)):
                raise MaskValueError(
                    f"{source}: mask holds non-integer values (dtype {mask.dtype}); save masks "
                    "as 8/16-bit integer PNGs of class values"
                )
            mask = mask.astype(np.int64)
        elif mask.dtype.kind not in "ui":
            raise MaskValueError(
                f"{source}: mask has dtype {mask.dtype}; expected integer class values "
                "(8- or 16-bit)"
            )
        if mask.dtype not in (np.uint8, np.uint16) and mask.size:
            out_of_range = (mask < 0) | (mask > MAX_VALUE)
            if out_of_range.any():
                raise MaskValueError(
                    f"{source}: mask values {shorten_values(np.unique(mask[out_of_range]))} are "
                    f"outside 0..{MAX_VALUE}; masks hold 8- or 16-bit class values"
                )
            mask = mask.astype(np.uint16)
        out = self._lut[mask]  # uint8 or uint16 values index the table directly
        unknown = out < 0
        if unknown.any():
            bad = np.unique(mask[unknown])
            raise MaskValueError(
                f"{source}: mask values {shorten_values(bad)} ({int(unknown.sum())} pixels) map to no "
                f"class (class values {shorten_values(self.values)}, ignored "
                f"{shorten_values(list(self.ignore_values))}); add them to 'classes' or "
                f"'ignore_values' in the class map ({CLASS_MAP_FILENAME})"
            )
        return out.astype(np.uint8)

    def encode_values(self, indices: np.ndarray) -> np.ndarray:
        """Class indices -> mask pixel values (uint8 when all fit, else uint16).

        IGNORE_INDEX becomes the first ignore value (0 when there is none).
        """
        indices = np.asarray(indices)
        high = max([*self.values, *self.ignore_values, 0])
        dtype = np.uint8 if high < 256 else np.uint16
        bad = (indices < 0) | ((indices >= self.num_classes) & (indices != IGNORE_INDEX))
        if bad.any():
            raise ValueError(
                f"class indices {shorten_values(np.unique(indices[bad]))} are not in "
                f"0..{self.num_classes - 1} or {IGNORE_INDEX} (ignore)"
            )
        lut = np.zeros(256, dtype=dtype)
        lut[: self.num_classes] = self.values
        lut[IGNORE_INDEX] = self.ignore_values[0] if self.ignore_values else 0
        return lut[indices.astype(np.uint8)]

    def colorize(self, indices: np.ndarray) -> np.ndarray:
        """Class indices (HxW) -> HxWx3 uint8 colours; ignored and unknown indices are black."""
        lut = np.zeros((256, 3), dtype=np.uint8)
        lut[: self.num_classes] = self.colors
        return lut[np.asarray(indices).astype(np.uint8)]


def _parse_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ValueError(f"{what} must be integers, got {value!r}")
    return int(value)


def _parse_class(entry: Any) -> ClassInfo:
    if not isinstance(entry, dict):
        raise TypeError(f"each class must be an object with 'name' and 'value', got {entry!r}")
    color = entry.get("color")
    if color is not None:
        if not isinstance(color, (list, tuple)) or len(color) != 3:
            raise ValueError(f"class {entry.get('name')!r}: color must be [r, g, b], got {color!r}")
        color = tuple(_parse_int(x, "color components") for x in color)
    return ClassInfo(
        name=str(entry["name"]), value=_parse_int(entry["value"], "class values"), color=color
    )
