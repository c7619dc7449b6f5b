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

from jobs.training.data_checks import DataPlan
from jobs.training.datasets import pair_items, read_bytes_naming_the_file
from unet_core.classes import ClassMap
from unet_core.data import decode_mask
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
            mask = decode_mask(
                read_bytes_naming_the_file(uri, endpoint_url), cmap, source=uri, options=decode
            )
        except (OSError, ValueError) as exc:
            log.warning("class weights: leaving out a mask: %s", exc)
            continue
        counted = class_pixel_counts(mask, cmap.num_classes)
        pixels.append(counted[0])
        image_pixels.append(counted[1])
    return {"pixels": pixels, "image_pixels": image_pixels}


def class_weights(
    plan: DataPlan, power: float, *, seed: int, endpoint_url: str | None = None
) -> list[float] | None:
    """The class weights of --class-balance ``power`` for the plan's training pairs, or None
    when it is 0 (every class weighs 1)."""
    if not power:
        return None
    pairs = list(plan.train)
    if len(pairs) > COUNT_LIMIT:
        pairs = random.Random(seed).sample(pairs, COUNT_LIMIT)
    items = pair_items(plan.root, pairs)
    rows = (
        ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // 16, 64)))
        .map_batches(
            _count_masks,
            batch_size=16,
            batch_format="numpy",
            fn_kwargs={
                "class_map": plan.class_map.to_dict(),
                "endpoint_url": endpoint_url,
                "decode": plan.decode,
            },
        )
        .take_all()
    )
    if not rows:
        raise ValueError(
            f"--class-balance: none of the {len(items)} training masks counted could be decoded "
            f"(under {plan.root}); fix the masks or train with --class-balance 0"
        )
    weights = median_frequency_weights(
        ((r["pixels"], r["image_pixels"]) for r in rows), power=power
    )
    log.info(
        "class weights (median-frequency balancing ** %g, counted on %d training masks): %s",
        power,
        len(rows),
        ", ".join(f"{n} {w:.2f}" for n, w in zip(plan.class_map.names, weights, strict=True)),
    )
    return weights
