"""The mergeable partial result of one Ray Data task: counters and fixed-size arrays whose size
depends on the class count, never on how many pairs a task saw, so the driver merges one per
task and its memory stays flat however large the set.

A task adds every pair's image header (`add_header`: size, mode) and, for the pairs in the
seeded sample, the decoded image and mask (`add_sample`: a small per-image pixel subsample for
the intensity statistics, class pixels, objects, rows). `merge` is exact: counts add up.
"""

from __future__ import annotations

import math
import pickle
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from jobs.planning import objects

ASPECT_BINS_PER_OCTAVE = 32
"""Aspect ratios (width / height) are tallied as round(log2(ratio) * 32): about 2% wide."""
PIXELS_PER_IMAGE = 1024
"""Pixels drawn per sampled image (seeded by the image's key) for the intensity statistics:
with the sample capped, the driver holds at most sample x this many pixels per channel."""
MAX_EXAMPLES = 5
"""Failed files named in the fingerprint (the count is complete)."""
MODE_CHANNELS = {"1": 1, "L": 1, "LA": 1, "La": 1, "I": 1, "F": 1, "P": 3, "PA": 3}
"""Channels of a Pillow mode as the images are read (alpha dropped, palette as RGB); modes
not listed: their band count minus alpha (RGB, RGBA, CMYK, YCbCr: 3), 16-bit modes: 1."""
MODE_DTYPES = {"I": "uint16", "F": "float32"}
"""Pixel type of a Pillow mode as read; ``I;16*`` modes uint16; the others uint8."""


def mode_channels(mode: str) -> int:
    if mode.startswith("I;16"):
        return 1
    return MODE_CHANNELS.get(mode, 3)


def mode_dtype(mode: str) -> str:
    return "uint16" if mode.startswith("I;16") else MODE_DTYPES.get(mode, "uint8")


def pixel_subsample(image: np.ndarray, key: str, seed: int) -> np.ndarray:
    """(N, 1, C) pixels of an HxWxC image, N <= PIXELS_PER_IMAGE, drawn by a generator seeded
    with (seed, key): the same pixels whichever task reads the image."""
    flat = image.reshape(-1, image.shape[-1])  # (H*W, C)
    if len(flat) > PIXELS_PER_IMAGE:
        rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
        flat = flat[rng.integers(0, len(flat), size=PIXELS_PER_IMAGE)]
    return flat[:, None, :].copy()


@dataclass
class Tally:
    """What a task saw; `merge` adds another tally to this one."""

    num_classes: int
    """Classes of the class map (mask indices 0..num_classes-1; others are ignored pixels)."""
    pairs: int = 0
    """Pairs listed to this task (every pair of the set, over all tasks)."""
    heights: Counter = field(default_factory=Counter)
    """Image height (as decoded, by the EXIF orientation) -> images."""
    widths: Counter = field(default_factory=Counter)
    """Image width -> images."""
    aspects: Counter = field(default_factory=Counter)
    """round(log2(width / height) * ASPECT_BINS_PER_OCTAVE) -> images."""
    modes: Counter = field(default_factory=Counter)
    """Pillow mode of the header -> images."""
    failures: int = 0
    """Images whose header (or, in the sample, image or mask) could not be read."""
    failure_examples: list[str] = field(default_factory=list)
    """The MAX_EXAMPLES first errors in sorted order, each naming its file."""
    sampled: int = 0
    """Sampled pairs read in full."""
    decoded: Counter = field(default_factory=Counter)
    """"<channels>x<dtype>" of the sampled images as read (unet_core.preprocessing.read_array)."""
    pixel_samples: dict = field(default_factory=dict)
    """key -> (N, 1, C) pixel subsample of a sampled image (`pixel_subsample`)."""
    low: dict = field(default_factory=dict)
    """channels -> per-channel minimum over every pixel of the sampled images."""
    high: dict = field(default_factory=dict)
    """channels -> per-channel maximum over every pixel of the sampled images."""
    ignored: int = 0
    """Mask pixels of no class (ignore values)."""
    class_pixels: np.ndarray | None = None
    """(K,) mask pixels per class."""
    images_with: np.ndarray | None = None
    """(K,) sampled images in which the class is present."""
    object_bins: np.ndarray | None = None
    """(K, objects.SIZE_BINS) objects per class per log-spaced area bin."""
    object_area: np.ndarray | None = None
    """(K,) summed object areas (mean = area / objects)."""
    touching: np.ndarray | None = None
    """(K,) objects that touch another object of their class (`jobs.planning.objects`)."""
    row_sum: np.ndarray | None = None
    """(K,) sum over images of the class's mean row (0 top, 1 bottom)."""
    row_sq: np.ndarray | None = None
    """(K,) sum of squares of those rows."""
    both: np.ndarray | None = None
    """(K, K) images with classes a and b present."""
    above: np.ndarray | None = None
    """(K, K) images with a above b by more than objects.ABOVE_MARGIN of the height."""

    def __post_init__(self) -> None:
        k = self.num_classes
        for name, shape, dtype in (
            ("class_pixels", (k,), np.int64),
            ("images_with", (k,), np.int64),
            ("object_bins", (k, objects.SIZE_BINS), np.int64),
            ("object_area", (k,), np.int64),
            ("touching", (k,), np.int64),
            ("row_sum", (k,), np.float64),
            ("row_sq", (k,), np.float64),
            ("both", (k, k), np.int64),
            ("above", (k, k), np.int64),
        ):
            if getattr(self, name) is None:
                setattr(self, name, np.zeros(shape, dtype))

    def fail(self, message: str) -> None:
        self.failures += 1
        message = re.sub(r" at 0x[0-9a-fA-F]+", "", message)  # Pillow names a BytesIO's address
        self.failure_examples = sorted([*self.failure_examples, message])[:MAX_EXAMPLES]

    def add_header(self, mode: str, height: int, width: int) -> None:
        self.heights[height] += 1
        self.widths[width] += 1
        self.aspects[round(math.log2(width / height) * ASPECT_BINS_PER_OCTAVE)] += 1
        self.modes[mode] += 1

    def add_sample(self, key: str, image: np.ndarray, mask: np.ndarray, seed: int) -> None:
        """A sampled pair: ``image`` HxWxC as read, ``mask`` HxW class indices."""
        channels = image.shape[-1]
        self.sampled += 1
        self.decoded[f"{channels}x{image.dtype}"] += 1
        self.pixel_samples[key] = pixel_subsample(image, key, seed)
        planes = np.ascontiguousarray(image.reshape(-1, channels).T)  # (C, H*W): fast reduce
        if planes.size:
            pick = (np.nanmin, np.nanmax) if planes.dtype.kind == "f" else (np.min, np.max)
            if planes.dtype.kind == "f":  # infinities are no intensities
                planes = np.where(np.isfinite(planes), planes, np.nan)
            low, high = (f(planes, axis=1).astype(np.float64) for f in pick)
            self._extreme(self.low, channels, low, np.fmin)
            self._extreme(self.high, channels, high, np.fmax)
        k = self.num_classes
        rows = objects.class_rows(mask, k)
        counts = objects.class_pixels(mask, k)
        self.class_pixels += counts
        self.ignored += int(mask.size - counts.sum())
        self.images_with += counts > 0
        for cls in np.flatnonzero(counts):
            areas, touching = objects.objects_of(mask == cls)
            np.add.at(self.object_bins[cls], objects.size_bin(areas), 1)
            self.object_area[cls] += int(areas.sum())
            self.touching[cls] += touching
        present = ~np.isnan(rows)
        self.row_sum[present] += rows[present]
        self.row_sq[present] += rows[present] ** 2
        both, above = objects.above_matrix(rows)
        self.both += both
        self.above += above

    @staticmethod
    def _extreme(store: dict, channels: int, values: np.ndarray, pick) -> None:
        store[channels] = values if channels not in store else pick(store[channels], values)

    def merge(self, other: Tally) -> Tally:
        if other.num_classes != self.num_classes:
            raise ValueError(f"tallies of {other.num_classes} and {self.num_classes} classes")
        for name in ("heights", "widths", "aspects", "modes", "decoded"):
            getattr(self, name).update(getattr(other, name))
        self.pairs += other.pairs
        self.failures += other.failures
        examples = sorted(self.failure_examples + other.failure_examples)
        self.failure_examples = examples[:MAX_EXAMPLES]  # the same whatever the merge order
        self.sampled += other.sampled
        self.pixel_samples.update(other.pixel_samples)
        for channels, values in other.low.items():
            self._extreme(self.low, channels, values, np.fmin)
        for channels, values in other.high.items():
            self._extreme(self.high, channels, values, np.fmax)
        self.ignored += other.ignored
        for name in ("class_pixels", "images_with", "object_bins", "object_area", "touching"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("row_sum", "row_sq", "both", "above"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    def to_bytes(self) -> bytes:
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def from_bytes(data: bytes) -> Tally:
        return pickle.loads(data)
