"""Pre-launch checks of the training data, on the driver, before any Ray Train worker starts.

What is checked, and how much is read:

- Pairing (unpaired images or masks, two images with one stem, empty folders): the full
  listing, always. Listing is cheap next to reading, and pairing needs every name.
- The class map: read once (``--class-map`` or ``classes.json`` at the root).
- Per pair: the image *header* only (mode and size as displayed, by its EXIF orientation
  unless --no-exif-transpose; from the first 64 KiB; no pixel decode), and the whole mask
  (decoded and mapped through the class map, so a value outside the map names its file and
  value), plus mask size == image size. An image above the pixel limit (--max-image-pixels)
  is only warned about here: training leaves it out as a bad pair (bounded by --max-failed-fraction).
- Channels: every checked image's channel count; a mix of grayscale and colour images is an
  error (the model takes one channel count) that names the odd files.

Sets up to ``--check-limit`` pairs (default 1000) are checked in full here, with a thread pool
for I/O. Larger sets are checked on a seeded random sample of that size here (fast feedback
for the common mistakes), then every remaining pair is checked by parallel Ray Data tasks
(``check_with_ray``), still before training starts; ``--no-full-check`` skips that pass. A
file that passes these checks and still fails to decode in training (an image is checked by
its header only) is left out there, counted and bounded by --max-failed-fraction
(``jobs.training.bad_pairs``).
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from jobs.common import fs
from jobs.planning.names import grouping
from jobs.training.pair_checks import PairCheck, check_pair, check_pairs
from unet_core.classes import CLASS_MAP_FILENAME, ClassMap
from unet_core.config import Preprocessing
from unet_core.data import (
    Pair,
    PairingError,
    pair_images_and_masks,
    split_pairs,
)
from unet_core.image_files import DEFAULT_OPTIONS, DecodeOptions, over_limit
from unet_core.messages import shorten

log = logging.getLogger(__name__)


class DataValidationError(ValueError):
    """The data cannot be trained on; the message names the files and the fix."""

    exit_kind = "data"  # a job ends with exit code 2 (jobs.common.exits)


@dataclass
class TrainingData:
    """The validated training data: absolute roots, class map, split, channels, sizes."""

    root: str
    class_map: ClassMap
    train: list[Pair]
    val: list[Pair]
    val_root: str
    """Root of the validation pairs: --val-data, or `root` for a split."""
    in_channels: int
    channel_counts: dict[int, int] = field(default_factory=dict)
    mean_pixels: float = 0.0
    """Mean height * width over the checked images (for memory estimates)."""
    decode: DecodeOptions = DEFAULT_OPTIONS
    """How the images and masks are decoded (--exif-transpose, --max-image-pixels)."""
    preprocess: Preprocessing | None = None
    """The run's preprocessing (`jobs.training.preprocess_fit`); None: not fitted yet."""


# --- verdicts ------------------------------------------------------------------------------

_KIND_TITLES = {
    "image": ("images cannot be read", "replace or remove them"),
    "mask_values": (
        "masks hold values outside the class map",
        "add the values to 'classes' or 'ignore_values' of the class map, or fix the masks",
    ),
    "mask": ("masks cannot be read", "replace or remove them (and their images)"),
    "size": ("masks differ in size from their images", "re-export the masks at image size"),
}


def _listing(items: list[str]) -> str:
    """One item per indented line, the first few of them (`unet_core.messages.shorten`)."""
    return "    " + shorten(items, sep="\n    ")


def problems_message(checks: Iterable[PairCheck], *, expected_channels: int | None = None) -> str:
    """One readable report of everything wrong, grouped by kind; empty when all is fine."""
    checks = list(checks)
    parts = []
    for kind, (title, fix) in _KIND_TITLES.items():
        bad = sorted((c for c in checks if c.kind == kind), key=lambda c: c.key)
        if bad:
            parts.append(f"{len(bad)} {title} (fix: {fix}):\n{_listing([c.problem for c in bad])}")
    counts = Counter(c.channels for c in checks if c.channels)
    if len(counts) > 1:
        majority = expected_channels or counts.most_common(1)[0][0]
        odd = sorted(c.image for c in checks if c.channels and c.channels != majority)
        name = {1: "grayscale", 3: "colour"}
        parts.append(
            f"images mix channel counts ({counts[1]} grayscale, {counts[3]} colour) but the "
            f"model takes one; these {len(odd)} are {name[3 if majority == 1 else 1]} "
            f"(fix: convert them to {name[majority]}, or remove them):\n{_listing(odd)}"
        )
    return "\n".join(parts)


# --- gathering ---------------------------------------------------------------------------


def read_class_map(
    root: str, class_map_path: str | None = None, *, endpoint_url: str | None = None
) -> ClassMap:
    """`--class-map FILE` (local or s3://), else classes.json at the data root."""
    uri = class_map_path or fs.join(root, CLASS_MAP_FILENAME)
    if not fs.exists(uri, endpoint_url=endpoint_url):
        if class_map_path:
            raise DataValidationError(f"class map {uri} does not exist (--class-map)")
        raise DataValidationError(
            f"{root}: no {CLASS_MAP_FILENAME} at the data root; add one or pass --class-map FILE "
            '(e.g. {"classes": [{"name": "background", "value": 0}, '
            '{"name": "object", "value": 255}]})'
        )
    text = fs.read_bytes(uri, endpoint_url=endpoint_url).decode("utf-8")
    try:
        return ClassMap.from_json(text, source=uri)
    except ValueError as exc:
        raise DataValidationError(str(exc)) from exc


def list_pairs(root: str, *, endpoint_url: str | None = None) -> list[Pair]:
    try:
        return pair_images_and_masks(root, lister=fs.make_lister(root, endpoint_url=endpoint_url))
    except PairingError as exc:
        raise DataValidationError(str(exc)) from exc


def refuse_shared_keys(root: str, train: list[Pair], val_root: str, val: list[Pair]) -> None:
    """A case (key: its path without extension) in both --data and --val-data would be
    validated on after being trained on: refused, naming the keys."""
    shared = sorted({p.key for p in train} & {p.key for p in val})
    if shared:
        raise DataValidationError(
            f"{len(shared)} case(s) are both in --data {root} and in --val-data {val_root}, "
            "so the validation figures (the best checkpoint, the alias gate) would score images "
            "the model trained on; remove them from one of the two:\n" + _listing(shared)
        )


def gather_training_data(
    data: str,
    *,
    val_data: str | None = None,
    class_map_path: str | None = None,
    val_fraction: float,
    seed: int,
    group_by: str | None = None,
    in_channels: int | None = None,
    num_workers: int = 1,
    check_limit: int = 1000,
    endpoint_url: str | None = None,
    decode: DecodeOptions = DEFAULT_OPTIONS,
) -> tuple[TrainingData, list[tuple[str, list[Pair]]]]:
    """Pair, split and check the data (decoded by ``decode``, which the result carries to the
    training datasets). Raises DataValidationError naming every bad file.

    Returns the `TrainingData` and the (root, pairs) still unchecked (large sets: everything outside
    the driver's sample), for `check_with_ray`.
    """
    root = fs.absolute(data)
    class_map = read_class_map(root, class_map_path, endpoint_url=endpoint_url)
    pairs = list_pairs(root, endpoint_url=endpoint_url)
    if val_data:
        val_root = fs.absolute(val_data)
        if val_root.rstrip("/") == root.rstrip("/"):
            raise DataValidationError(
                f"--val-data {val_data} is the training root {root}: validation on the images "
                "it trains on says nothing; give a separate folder, or leave --val-data out to "
                "hold out --val-fraction of the pairs"
            )
        train, val = pairs, list_pairs(val_root, endpoint_url=endpoint_url)
        refuse_shared_keys(root, train, val_root, val)
    else:
        val_root = root
        if val_fraction <= 0:
            raise DataValidationError(
                "no validation set: pass --val-data ROOT or a --val-fraction above 0 "
                "(validation metrics pick the best checkpoint and gate the alias)"
            )
        groups = grouping([p.key for p in pairs], group_by)  # --group-by names: name blocks
        train, val = split_pairs(pairs, val_fraction=val_fraction, seed=seed, group_by=groups)
    if len(train) < num_workers:
        raise DataValidationError(
            f"{root}: {len(train)} training pairs for {num_workers} workers; every worker needs "
            "at least one (add data, lower --num-workers or --val-fraction)"
        )
    if not val:
        raise DataValidationError(f"{val_root}: the validation set is empty; add pairs")

    groups = [(root, train), (val_root, val)]
    total = len(train) + len(val)
    sampled = total > check_limit
    rng = random.Random(seed)
    to_check: list[tuple[str, list[Pair]]] = []
    rest: list[tuple[str, list[Pair]]] = []
    for group_root, group in groups:
        if sampled:
            share = max(1, round(check_limit * len(group) / total))
            picked = set(rng.sample(range(len(group)), min(share, len(group))))
            to_check.append((group_root, [p for i, p in enumerate(group) if i in picked]))
            rest.append((group_root, [p for i, p in enumerate(group) if i not in picked]))
        else:
            to_check.append((group_root, group))
    checks: list[PairCheck] = []
    for group_root, group in to_check:
        checks += check_pairs(
            group_root, group, class_map, endpoint_url=endpoint_url, decode=decode
        )
    large = [c.image for c in checks if over_limit(c.height, c.width, decode)]
    if large:
        log.warning(
            "%d image(s) above the pixel limit will be left out as bad pairs (raise "
            "--max-image-pixels to train on them): %s",
            len(large),
            shorten(large),
        )
    message = problems_message(checks)
    if message:
        where = f"a sample of {len(checks)} of {total} pairs" if sampled else f"{total} pairs"
        raise DataValidationError(
            f"{root}: the data failed validation ({where} checked):\n{message}"
        )

    counts = Counter(c.channels for c in checks)
    found = counts.most_common(1)[0][0]
    channels = in_channels or found
    if in_channels and in_channels != found:
        log.warning(
            "images are %s but --in-channels is %d: they are converted when decoded",
            "grayscale" if found == 1 else "colour",
            in_channels,
        )
    gathered = TrainingData(
        root=root,
        class_map=class_map,
        train=train,
        val=val,
        val_root=val_root,
        in_channels=channels,
        channel_counts=dict(counts),
        mean_pixels=float(np.mean([c.height * c.width for c in checks])),
        decode=decode,
    )
    return gathered, [(r, g) for r, g in rest if g]


def check_with_ray(
    data: TrainingData,
    unchecked: list[tuple[str, list[Pair]]],
    *,
    endpoint_url: str | None = None,
    max_reported: int = 1000,
    ray_remote_args: dict | None = None,
) -> None:
    """Check the pairs the driver did not, in parallel Ray Data tasks; raise on problems."""
    import ray.data

    class_map_dict = data.class_map.to_dict()
    expected = max(data.channel_counts, key=data.channel_counts.get)

    def check_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        class_map = ClassMap.from_dict(class_map_dict)
        rows = [
            check_pair(
                str(r),
                Pair(image=str(i), mask=str(m), key=str(k)),
                class_map,
                endpoint_url=endpoint_url,
                decode=data.decode,
            )
            for r, i, m, k in zip(
                batch["root"], batch["image"], batch["mask"], batch["key"], strict=True
            )
        ]
        bad = [c for c in rows if c.problem or c.channels != expected]
        return {
            "key": np.array([c.key for c in bad], dtype=object),
            "image": np.array([c.image for c in bad], dtype=object),
            "channels": np.array([c.channels for c in bad], dtype=np.int64),
            "problem": np.array([c.problem for c in bad], dtype=object),
            "kind": np.array([c.kind for c in bad], dtype=object),
        }

    items = [
        {"root": r, "image": p.image, "mask": p.mask, "key": p.key} for r, g in unchecked for p in g
    ]
    log.info("checking %d more pairs with Ray Data tasks (--no-full-check skips this)", len(items))
    ds = ray.data.from_items(items).map_batches(
        check_batch, batch_size=64, batch_format="numpy", **(ray_remote_args or {})
    )
    bad = ds.take(max_reported)
    if not bad:
        return
    checks = [
        PairCheck(
            key=str(r["key"]),
            image=str(r["image"]),
            channels=int(r["channels"]),
            problem=str(r["problem"]),
            kind=str(r["kind"]),
        )
        for r in bad
    ]
    # pairs with the expected channel count stand in for the majority in the message
    majority = [PairCheck(key="", image="", channels=expected)] * max(1, len(items) - len(bad))
    message = problems_message(checks + majority, expected_channels=expected)
    if message:
        raise DataValidationError(
            f"{data.root}: the data failed validation (Ray Data pass over {len(items)} pairs):\n"
            + message
        )
