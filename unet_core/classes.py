"""Class maps: class names, the mask pixel value of each class, ignored values, colours."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unet_core.config import IGNORE_INDEX

CLASS_MAP_FILENAME = "classes.json"

# Distinct default colours (Pascal VOC-like), used when a class has none.
_DEFAULT_PALETTE = [
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
]


class MaskValueError(ValueError):
    """A mask holds pixel values that map to no class."""


@dataclass(frozen=True)
class ClassInfo:
    name: str
    value: int
    color: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class ClassMap:
    """Class ``i`` is ``classes[i]``; its pixels carry ``classes[i].value`` in mask files."""

    classes: tuple[ClassInfo, ...]
    ignore_values: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if len(self.classes) < 2:
            raise ValueError("a class map needs at least 2 classes (binary: background + object)")
        if len(self.classes) >= IGNORE_INDEX:
            raise ValueError(f"at most {IGNORE_INDEX - 1} classes are supported")
        values = [c.value for c in self.classes]
        names = [c.name for c in self.classes]
        for v in [*values, *self.ignore_values]:
            if not 0 <= int(v) <= 65535:
                raise ValueError(f"mask value {v} is outside 0..65535")
        dup_v = sorted({v for v in values if values.count(v) > 1})
        if dup_v:
            raise ValueError(f"mask values {dup_v} are given to more than one class")
        dup_n = sorted({n for n in names if names.count(n) > 1})
        if dup_n:
            raise ValueError(f"class names {dup_n} appear more than once")
        both = sorted(set(values) & set(self.ignore_values))
        if both:
            raise ValueError(f"values {both} are both a class value and an ignore value")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def values(self) -> list[int]:
        return [c.value for c in self.classes]

    @property
    def colors(self) -> np.ndarray:
        """(K, 3) uint8 display colours; the default palette fills the missing ones."""
        out = [
            c.color if c.color is not None else _DEFAULT_PALETTE[i % len(_DEFAULT_PALETTE)]
            for i, c in enumerate(self.classes)
        ]
        return np.asarray(out, dtype=np.uint8)

    # --- (de)serialisation -------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "<class map>") -> ClassMap:
        try:
            classes = tuple(
                ClassInfo(
                    name=str(c["name"]),
                    value=int(c["value"]),
                    color=tuple(int(x) for x in c["color"]) if c.get("color") is not None else None,
                )
                for c in data["classes"]
            )
            ignore = tuple(int(v) for v in data.get("ignore_values", []))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"{source}: invalid class map ({exc!r}); expected "
                '{"classes": [{"name": ..., "value": ..., "color": [r, g, b]}], "ignore_values": []}'
            ) from exc
        try:
            return cls(classes=classes, ignore_values=ignore)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        return {
            "classes": [
                {"name": c.name, "value": c.value, "color": list(map(int, col))}
                for c, col in zip(self.classes, self.colors, strict=True)
            ],
            "ignore_values": list(self.ignore_values),
        }

    @classmethod
    def from_json(cls, text: str, *, source: str = "<class map>") -> ClassMap:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{source}: not valid JSON ({exc})") from exc
        return cls.from_dict(data, source=source)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_file(cls, path: str | Path) -> ClassMap:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"class map {path} does not exist")
        return cls.from_json(path.read_text(), source=str(path))

    @classmethod
    def from_names(
        cls,
        names: list[str],
        *,
        values: list[int] | None = None,
        ignore_values: tuple[int, ...] = (),
    ) -> ClassMap:
        values = values if values is not None else list(range(len(names)))
        return cls(
            tuple(ClassInfo(n, int(v)) for n, v in zip(names, values, strict=True)),
            tuple(ignore_values),
        )

    @classmethod
    def binary(
        cls,
        names: tuple[str, str] = ("background", "foreground"),
        values: tuple[int, int] = (0, 255),
    ) -> ClassMap:
        return cls.from_names(list(names), values=list(values))

    # --- decoding -----------------------------------------------------------------------
    def _lut(self, size: int) -> np.ndarray:
        lut = np.full(size, -1, dtype=np.int16)
        for i, c in enumerate(self.classes):
            if c.value < size:
                lut[c.value] = i
        for v in self.ignore_values:
            if v < size:
                lut[v] = IGNORE_INDEX
        return lut

    def decode(self, mask: np.ndarray, *, source: str = "<mask>") -> np.ndarray:
        """Pixel values -> class indices (uint8); ignore values -> IGNORE_INDEX."""
        mask = np.asarray(mask)
        if mask.dtype.kind not in "ui":
            raise MaskValueError(f"{source}: mask has dtype {mask.dtype}; expected integers")
        if mask.size and (mask.min() < 0 or mask.max() > 65535):
            raise MaskValueError(f"{source}: mask values outside 0..65535")
        size = 256 if mask.dtype == np.uint8 else 65536
        lut = self._lut(size)
        out = lut[mask.astype(np.int64) if size > 256 else mask]
        if (out < 0).any():
            unknown = np.unique(mask[out < 0])
            shown = ", ".join(str(int(v)) for v in unknown[:10])
            raise MaskValueError(
                f"{source}: mask values [{shown}]{' ...' if len(unknown) > 10 else ''} map to no "
                f"class (known values {self.values}, ignored {list(self.ignore_values)}); add them "
                "to 'classes' or 'ignore_values' in the class map"
            )
        return out.astype(np.uint8)

    def encode_values(self, indices: np.ndarray) -> np.ndarray:
        """Class indices -> mask pixel values (uint8 when they fit, else uint16)."""
        dtype = np.uint8 if max(self.values + list(self.ignore_values) + [0]) < 256 else np.uint16
        lut = np.zeros(256, dtype=dtype)
        lut[: self.num_classes] = self.values
        lut[IGNORE_INDEX] = self.ignore_values[0] if self.ignore_values else 0
        return lut[np.asarray(indices, dtype=np.uint8)]

    def colorize(self, indices: np.ndarray) -> np.ndarray:
        """Class indices -> HxWx3 uint8 colours (ignore -> black)."""
        lut = np.zeros((256, 3), dtype=np.uint8)
        lut[: self.num_classes] = self.colors
        return lut[np.asarray(indices, dtype=np.uint8)]
