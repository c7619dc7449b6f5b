"""--class-balance: the cross-entropy's class weights, counted on the training masks before
training (driver side, in Ray Data tasks), so every worker gets the same weights.

Up to `COUNT_LIMIT` training masks (all of a smaller set; else a sample drawn by the seed) are
decoded through the class map and their class pixels counted
(`unet_core.losses.class_pixel_counts`); the weights are those of median-frequency balancing
(`unet_core.losses.median_frequency_weights`) raised to the --class-balance power. A mask that
fails to decode is left out of the count (training records it as a bad pair).
"""

from __future__ import annotations

import logging
import random

import numpy as np
import ray.data

from jobs.common.pairs import pair_items, read_mask
from jobs.training.data_checks import TrainingData
from unet_core.classes import ClassMap
from unet_core.image_files import DecodeOptions
from unet_core.losses import class_pixel_counts, median_frequency_weights

log = logging.getLogger(__name__)

COUNT_LIMIT = 1000
"""Most training masks counted for the class weights (a seeded sample of a larger set)."""


def _count_masks(
    batch: dict[str, np.ndarray],
    *,
    class_map: dict,
    endpoint_url: str | None,
    decode: DecodeOptions,
) -> dict[str, list]:
    cmap = ClassMap.from_dict(class_map)
    pixels, image_pixels = [], []
    for uri in batch["mask"]:
        try:
            mask = read_mask(str(uri), cmap, endpoint_url=endpoint_url, decode=decode)
        except (OSError, ValueError) as exc:
            log.warning("class weights: leaving out a mask: %s", exc)
            continue
        counted = class_pixel_counts(mask, cmap.num_classes)
        pixels.append(counted[0])
        image_pixels.append(counted[1])
    return {"pixels": pixels, "image_pixels": image_pixels}


def class_weights(
    data: TrainingData, power: float, *, seed: int, endpoint_url: str | None = None
) -> list[float] | None:
    """The class weights of --class-balance ``power`` for the training pairs of ``data``, or None
    when it is 0 (every class weighs 1)."""
    if not power:
        return None
    pairs = list(data.train)
    if len(pairs) > COUNT_LIMIT:
        pairs = random.Random(seed).sample(pairs, COUNT_LIMIT)
    items = pair_items(data.root, pairs)
    rows = (
        ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // 16, 64)))
        .map_batches(
            _count_masks,
            batch_size=16,
            batch_format="numpy",
            fn_kwargs={
                "class_map": data.class_map.to_dict(),
                "endpoint_url": endpoint_url,
                "decode": data.decode,
            },
        )
        .take_all()
    )
    if not rows:
        raise ValueError(
            f"--class-balance: none of the {len(items)} training masks counted could be decoded "
            f"(under {data.root}); fix the masks or train with --class-balance 0"
        )
    weights = median_frequency_weights(
        ((r["pixels"], r["image_pixels"]) for r in rows), power=power
    )
    log.info(
        "class weights (median-frequency balancing ** %g, counted on %d training masks): %s",
        power,
        len(rows),
        ", ".join(f"{n} {w:.2f}" for n, w in zip(data.class_map.names, weights, strict=True)),
    )
    return weights
