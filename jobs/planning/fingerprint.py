"""The fingerprint of a labelled data set: what a plan needs to know about it, as JSON.

`Fingerprint` is built from the merged `jobs.planning.tally.Tally` of every pair (sizes and
modes from the image headers of the whole listing; pixels, classes, objects and layout from a
seeded sample of pairs) and the group summary of every name (`jobs.planning.names`). Figures are
rounded to 6 significant digits so that the same data and seed give the same JSON whatever the
order in which the tasks' tallies were merged.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jobs.planning import objects
from jobs.planning.tally import (
    ASPECT_BINS_PER_OCTAVE,
    PIXELS_PER_IMAGE,
    Tally,
    mode_channels,
    mode_dtype,
)
from unet_core.preprocessing import ChannelStats, channel_statistics

FORMAT = 1
"""Version of the fingerprint's JSON layout."""
LAYOUT_MIN_IMAGES = 5
"""A class pair says something about the layout only when both are in at least this many
sampled images."""
LAYOUT_AGREEMENT = 0.9
"""The data set has a vertical layout when, for some pair of classes, one is above the other
(`jobs.planning.objects.ABOVE_MARGIN`) in at least this fraction of the images with both."""


def _r(x: float | None) -> float | None:
    """6 significant digits (None and non-finite values as None)."""
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.6g}")


def percentile(counts: Counter, q: float) -> float | None:
    """The nearest-rank ``q`` quantile (0..1) of values given as value -> count."""
    total = sum(counts.values())
    if not total:
        return None
    rank, seen = max(1, math.ceil(q * total)), 0
    for value in sorted(counts):
        seen += counts[value]
        if seen >= rank:
            return value
    return max(counts)


@dataclass
class SizeSummary:
    """Image sizes as decoded (by the EXIF orientation), from the headers of every image."""

    images: int
    """Images whose header was read."""
    median_height: float | None
    """Median height in pixels."""
    median_width: float | None
    """Median width in pixels."""
    p5_height: float | None
    """5th percentile of the heights (the spread's low end)."""
    p95_height: float | None
    """95th percentile of the heights."""
    p5_width: float | None
    """5th percentile of the widths."""
    p95_width: float | None
    """95th percentile of the widths."""
    median_aspect: float | None
    """Median width / height (to about 2%)."""
    p5_aspect: float | None
    """5th percentile of width / height."""
    p95_aspect: float | None
    """95th percentile of width / height."""


@dataclass
class ClassSummary:
    """One class in the sampled masks (objects: `jobs.planning.objects`)."""

    name: str
    """The class's name in the class map."""
    pixel_fraction: float | None
    """Share of the labelled (not ignored) pixels that are this class."""
    image_fraction: float | None
    """Share of the sampled images in which the class is present."""
    objects_per_image: float | None
    """Objects (4-connected components) per image in which the class is present."""
    area_median: float | None
    """Median object area in pixels (to about 9%: log-spaced bins)."""
    area_p5: float | None
    """5th percentile of the object areas."""
    area_p95: float | None
    """95th percentile of the object areas."""
    area_mean: float | None
    """Mean object area in pixels (exact)."""
    touching_fraction: float | None
    """Share of the class's objects within objects.TOUCH_GAP + 1 pixels of another object of
    the same class (separated only by a thin line of other pixels): what border weights are
    for."""
    mean_row: float | None
    """Mean over images of the class's mean row, 0 (top) to 1 (bottom)."""
    row_std: float | None
    """Standard deviation over images of that row: small when the class keeps its place."""


@dataclass
class LayoutPair:
    """Evidence of a vertical layout: one class above another in most images with both."""

    above: str
    """The class that is higher in the image."""
    below: str
    """The class that is lower."""
    fraction: float
    """Share of the images with both in which ``above`` is higher by objects.ABOVE_MARGIN."""
    images: int
    """Sampled images in which both classes are present."""


@dataclass
class NameGroups:
    """Groups of near-duplicate names (`jobs.planning.names`) over the whole listing."""

    numbered_fraction: float
    """Share of the names that end in a frame or slice number."""
    sequences: int
    """Distinct prefixes before a trailing number (sequences, stacks)."""
    block: int
    """Names per block: a contiguous run of one sequence is cut into blocks of this many."""
    groups: int
    """Groups in all (a name alone is a group of one)."""
    grouped_names: int
    """Names in a group of two or more."""
    largest_group: int
    """Names in the largest group."""
    examples: list[str] = field(default_factory=list)
    """Labels of the largest groups (``<prefix><first>-<last>``)."""


@dataclass
class Fingerprint:
    """What `unet-plan` found in a data set (JSON: `to_json` / `from_json`)."""

    root: str
    """The data root (absolute path or s3:// URI)."""
    pairs: int
    """Image/mask pairs listed (all of them)."""
    sampled: int
    """Pairs read in full for the pixel, class and object statistics (a seeded sample)."""
    seed: int
    """Seed of the sample."""
    sizes: SizeSummary
    """Image sizes, from every header."""
    modes: dict[str, int]
    """Pillow mode of the image headers -> images."""
    channels: dict[str, int]
    """Channels per image as read (from the header's mode) -> images."""
    dtypes: dict[str, int]
    """Pixel type as read (from the header's mode) -> images."""
    decoded: dict[str, int]
    """"<channels>x<dtype>" of the sampled images as decoded (multi-page and multi-band TIFF
    show their channels here) -> images."""
    intensity: ChannelStats | None
    """Per-channel statistics of the sampled images (the majority channel count), in their
    own units: robust percentiles, mean and std from PIXELS_PER_IMAGE pixels per image, min and
    max over every pixel."""
    classes: list[ClassSummary]
    """One entry per class of the class map, in its order."""
    ignored_fraction: float | None
    """Share of the sampled mask pixels whose value is ignored."""
    vertical_layout: bool
    """Some class is above another in most images (sky above road): vertical flips and
    90-degree turns would show the model scenes it never meets. False for microscopy and
    aerial images, where every dihedral transform is a valid view."""
    layout: list[LayoutPair]
    """The class pairs behind `vertical_layout` (at most 10, most consistent first)."""
    name_groups: NameGroups
    """Groups of near-duplicate names, which a split must keep on one side."""
    failures: int
    """Images or masks that could not be read (headers of all, files of the sample)."""
    failure_examples: list[str]
    """The first few of those errors, each naming its file."""
    format: int = FORMAT
    """Version of this layout."""

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["intensity"] = self.intensity.to_dict() if self.intensity else None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fingerprint:
        data = dict(data)
        data["sizes"] = SizeSummary(**data["sizes"])
        data["classes"] = [ClassSummary(**c) for c in data["classes"]]
        data["layout"] = [LayoutPair(**p) for p in data["layout"]]
        data["name_groups"] = NameGroups(**data["name_groups"])
        if data.get("intensity"):
            data["intensity"] = ChannelStats.from_dict(data["intensity"])
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Fingerprint:
        return cls.from_dict(json.loads(text))


# --- from a merged tally --------------------------------------------------------------------


def size_summary(tally: Tally) -> SizeSummary:
    aspects = Counter({2 ** (b / ASPECT_BINS_PER_OCTAVE): n for b, n in tally.aspects.items()})
    h, w = tally.heights, tally.widths
    return SizeSummary(
        images=sum(h.values()),
        median_height=percentile(h, 0.5),
        median_width=percentile(w, 0.5),
        p5_height=percentile(h, 0.05),
        p95_height=percentile(h, 0.95),
        p5_width=percentile(w, 0.05),
        p95_width=percentile(w, 0.95),
        median_aspect=_r(percentile(aspects, 0.5)),
        p5_aspect=_r(percentile(aspects, 0.05)),
        p95_aspect=_r(percentile(aspects, 0.95)),
    )


def _bin_percentile(bins: np.ndarray, q: float) -> float | None:
    total = int(bins.sum())
    if not total:
        return None
    index = int(np.searchsorted(np.cumsum(bins), max(1, math.ceil(q * total))))
    return _r(objects.bin_area(index))


def class_summaries(tally: Tally, names: list[str]) -> list[ClassSummary]:
    labelled = int(tally.class_pixels.sum())
    out = []
    for k, name in enumerate(names):
        present = int(tally.images_with[k])
        count = int(tally.object_bins[k].sum())
        mean_row = tally.row_sum[k] / present if present else None
        var = tally.row_sq[k] / present - mean_row**2 if present else None
        out.append(
            ClassSummary(
                name=name,
                pixel_fraction=_r(tally.class_pixels[k] / labelled) if labelled else None,
                image_fraction=_r(present / tally.sampled) if tally.sampled else None,
                objects_per_image=_r(count / present) if present else None,
                area_median=_bin_percentile(tally.object_bins[k], 0.5),
                area_p5=_bin_percentile(tally.object_bins[k], 0.05),
                area_p95=_bin_percentile(tally.object_bins[k], 0.95),
                area_mean=_r(tally.object_area[k] / count) if count else None,
                touching_fraction=_r(tally.touching[k] / count) if count else None,
                mean_row=_r(mean_row),
                row_std=_r(math.sqrt(max(var, 0.0))) if var is not None else None,
            )
        )
    return out


def layout_pairs(tally: Tally, names: list[str]) -> list[LayoutPair]:
    found = []
    for a, b in zip(*np.nonzero(tally.both >= LAYOUT_MIN_IMAGES), strict=True):
        fraction = tally.above[a, b] / tally.both[a, b]
        if fraction >= LAYOUT_AGREEMENT:
            found.append(LayoutPair(names[a], names[b], _r(fraction), int(tally.both[a, b])))
    return sorted(found, key=lambda p: (-p.fraction, -p.images, p.above, p.below))[:10]


def intensity_stats(tally: Tally, seed: int) -> ChannelStats | None:
    """`unet_core.preprocessing.channel_statistics` of the sampled images' pixel subsamples
    (those of the majority channel count, in key order), with the min, max and bit depth of
    every pixel of those images; None without a sampled image."""
    by_channels = Counter(a.shape[-1] for a in tally.pixel_samples.values())
    if not by_channels:
        return None
    channels = min(by_channels, key=lambda c: (-by_channels[c], c))
    keys = sorted(k for k, a in tally.pixel_samples.items() if a.shape[-1] == channels)
    stats = channel_statistics(
        (tally.pixel_samples[k] for k in keys), max_pixels_per_image=PIXELS_PER_IMAGE, seed=seed
    )
    low, high = tally.low[channels], tally.high[channels]
    bits = stats.bit_depth
    if bits is not None:  # as ChannelStats.bit_depth, from every pixel rather than the draw
        top = float(np.nanmax(high)) if np.isfinite(high).any() else 0.0
        bits = max(1, math.ceil(math.log2(top + 1))) if top > 0 else 1

    def rounded(values) -> tuple[float | None, ...]:
        return tuple(_r(float(v)) for v in values)

    return dataclasses.replace(
        stats,
        bit_depth=bits,
        p_low=rounded(stats.p_low),
        p_high=rounded(stats.p_high),
        mean=rounded(stats.mean),
        std=rounded(stats.std),
        min=rounded(low),
        max=rounded(high),
    )


def _by_count(counter: Counter) -> dict[str, int]:
    return {str(k): int(v) for k, v in sorted(counter.items(), key=lambda kv: str(kv[0]))}


def build_fingerprint(
    tally: Tally,
    *,
    root: str,
    seed: int,
    class_names: list[str],
    name_groups: dict[str, Any],
    intensity: ChannelStats | None,
) -> Fingerprint:
    """The fingerprint of a merged tally (``intensity``: `jobs.planning.scan.intensity_stats`)."""
    channels: Counter = Counter()
    dtypes: Counter = Counter()
    for mode, n in tally.modes.items():
        channels[mode_channels(mode)] += n
        dtypes[mode_dtype(mode)] += n
    layout = layout_pairs(tally, class_names)
    total = int(tally.class_pixels.sum()) + tally.ignored
    return Fingerprint(
        root=root,
        pairs=tally.pairs,
        sampled=tally.sampled,
        seed=seed,
        sizes=size_summary(tally),
        modes=_by_count(tally.modes),
        channels=_by_count(channels),
        dtypes=_by_count(dtypes),
        decoded=_by_count(tally.decoded),
        intensity=intensity,
        classes=class_summaries(tally, class_names),
        ignored_fraction=_r(tally.ignored / total) if total else None,
        vertical_layout=bool(layout),
        layout=layout,
        name_groups=NameGroups(**name_groups),
        failures=tally.failures,
        failure_examples=list(tally.failure_examples),
    )
