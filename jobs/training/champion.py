"""The alias gate's comparison: the new version and the version holding the alias (the
champion), scored on the new run's validation pairs by one computation.

A run's `val_miou` is measured on its own split; a new `--seed` or data root changes the split,
so the champion's `val_miou` tag is not comparable with it. Here both checkpoints (the champion
fetched from the registry with the batch jobs' loader, `jobs.common.model_source`) are scored
on the plan's validation pairs (`val_root`, `val`), decoded as the training datasets decode them
(the plan's class map, channels and `DecodeOptions`): whole images, fp32, argmax, one
`ConfusionMatrix` over the set (`unet_core.engine.evaluate`, the workers' validation code). The
pairs are scored in Ray tasks of `CHUNK` pairs, so the driver never holds the images, whatever
the size of the set; only the K x K counts come back. A champion that cannot be scored (its
checkpoint unreadable, another class map, other input channels) is not compared: the comparison
says why, and the gate (`jobs.training.registry.decide_alias`) moves the alias only with
--force-alias.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jobs.training.datasets import decode_rows, pair_items
from unet_core.checkpoint import LoadedModel, load_checkpoint
from unet_core.classes import ClassMap
from unet_core.metrics import ConfusionMatrix

log = logging.getLogger(__name__)

CHUNK = 8
"""Validation pairs per Ray task (decoded and held together by that task)."""
_TAG_TEXT = 500  # MLflow tag values are bounded; a reason can quote a long error


@dataclass
class ChampionComparison:
    """What the gate knows of the version holding the alias, on this run's validation pairs."""

    alias: str
    champion_version: str | None
    """The version holding the alias; None when no version does."""
    champion_miou: float | None = None
    """The champion's mean IoU on this run's validation pairs."""
    candidate_miou: float | None = None
    """The new version's mean IoU on the same pairs, by the same computation."""
    pairs: int = 0
    """Validation pairs scored (those that decoded)."""
    refused: str | None = None
    """Why the champion was not compared (then both figures are None)."""

    @property
    def compared(self) -> bool:
        return self.champion_miou is not None and self.candidate_miou is not None

    def to_dict(self) -> dict:
        """The figures for the job's summary (`alias_decision`)."""
        return {
            "champion_version": self.champion_version,
            "champion_val_miou": self.champion_miou,
            "val_miou": self.candidate_miou,
            "val_pairs": self.pairs,
            "compared": self.compared,
            "not_compared_because": self.refused,
        }

    def tags(self) -> dict[str, str]:
        """Tags for the new version: the champion and both figures on this split."""
        tags = {"champion_version": self.champion_version or "none"}
        if self.compared:
            tags |= {
                "champion_val_miou_on_this_split": f"{self.champion_miou:.6f}",
                "val_miou_on_this_split": f"{self.candidate_miou:.6f}",
                "val_pairs_compared": str(self.pairs),
            }
        if self.refused:
            tags["champion_not_compared"] = self.refused[:_TAG_TEXT]
        return tags


def alias_holder(client, name: str, alias: str) -> str | None:
    """The version of `name` holding `alias`, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def comparability_problems(
    champion: LoadedModel, class_map: ClassMap, in_channels: int
) -> list[str]:
    """Why `champion` cannot be scored on pairs decoded with `class_map` and `in_channels`."""
    problems = []
    ours = [(c.name, c.value) for c in class_map.classes]
    theirs = [(c.name, c.value) for c in champion.class_map.classes]
    if ours != theirs:
        problems.append(f"its classes (name, mask value) {theirs} differ from this run's {ours}")
    if sorted(champion.class_map.ignore_values) != sorted(class_map.ignore_values):
        problems.append(
            f"its ignored mask values {list(champion.class_map.ignore_values)} differ from this "
            f"run's {list(class_map.ignore_values)}"
        )
    if champion.model_config.in_channels != in_channels:
        problems.append(
            f"it takes {champion.model_config.in_channels}-channel images, this run "
            f"{in_channels}-channel ones"
        )
    return problems


def confusion_on(loaded: LoadedModel, pairs: list[tuple[np.ndarray, np.ndarray]]):
    """One confusion matrix of `loaded` over (image, mask) pairs: whole images one at a time,
    fp32, argmax (`unet_core.engine.evaluate`, as the workers validate)."""
    from torch import nn

    from unet_core.config import IGNORE_INDEX
    from unet_core.engine import evaluate
    from unet_core.transforms import collate_pairs

    batches = (collate_pairs([pair], loaded.preprocess) for pair in pairs)  # (1, C, H, W)
    loss = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)  # evaluate sums a loss: unused here
    stats = evaluate(
        loaded.model, batches, loss, num_classes=loaded.class_map.num_classes, device="cpu"
    )
    return stats.confusion


def _score_chunk(items: list[dict], settings: dict, *checkpoints: bytes):
    """Ray task: (a K x K count matrix per checkpoint, pairs scored, {image: error})."""
    batch = {k: np.array([item[k] for item in items]) for k in ("key", "image", "mask")}
    rows, errors = decode_rows(batch, **settings)
    pairs = list(zip(rows["image"], rows["mask"], strict=True))
    matrices = [confusion_on(load_checkpoint(data), pairs).matrix for data in checkpoints]
    return matrices, len(pairs), errors


def score_on_pairs(
    checkpoints: list[bytes], plan, *, endpoint_url: str | None = None
) -> tuple[list[ConfusionMatrix], int, dict[str, str]]:
    """Each checkpoint's confusion matrix over the plan's validation pairs (Ray tasks of
    `CHUNK` pairs), the pairs scored, and {image URI: error} of those that did not decode."""
    import ray

    refs = [ray.put(data) for data in checkpoints]  # once each, shared by every task
    items = pair_items(plan.val_root, plan.val)
    settings = {
        "class_map": plan.class_map.to_dict(),
        "channels": plan.in_channels,
        "endpoint_url": endpoint_url,
        "decode": plan.decode,
    }
    task = ray.remote(num_cpus=1)(_score_chunk)
    pending = [
        task.remote(items[i : i + CHUNK], settings, *refs) for i in range(0, len(items), CHUNK)
    ]
    k = plan.class_map.num_classes
    totals, scored, errors = [ConfusionMatrix(k) for _ in checkpoints], 0, {}
    for matrices, count, failed in ray.get(pending):
        for total, matrix in zip(totals, matrices, strict=True):
            total.merge(ConfusionMatrix.from_array(matrix))
        scored += count
        errors.update(failed)
    return totals, scored, errors


def compare_with_champion(
    name: str,
    alias: str,
    *,
    candidate: str | Path,
    plan,
    tracking_uri: str | None = None,
    endpoint_url: str | None = None,
) -> ChampionComparison:
    """Score the version of `name` holding `alias` and the `candidate` checkpoint file on the
    plan's validation pairs; a champion that cannot be scored comes back `refused`, saying why."""
    from jobs.common.mlflow_store import mlflow_client
    from jobs.common.model_source import (
        ModelSourceError,
        fetch_checkpoint_bytes,
        resolve_model,
    )

    client, _ = mlflow_client(tracking_uri)
    version = alias_holder(client, name, alias)
    if version is None:
        return ChampionComparison(alias, None)
    uri = f"models:/{name}/{version}"

    def refused(why: str) -> ChampionComparison:
        log.warning("not comparing with version %s @%s (%s): %s", version, alias, uri, why)
        return ChampionComparison(alias, version, refused=why)

    try:
        data = fetch_checkpoint_bytes(
            resolve_model(uri, tracking_uri=tracking_uri),
            tracking_uri=tracking_uri,
            endpoint_url=endpoint_url,
        )
        champion = load_checkpoint(data)
    except (ModelSourceError, ValueError, OSError) as exc:
        return refused(f"its checkpoint cannot be read ({exc})")
    problems = comparability_problems(champion, plan.class_map, plan.in_channels)
    if problems:
        return refused("; ".join(problems))
    if not plan.val:
        return refused("this run has no validation pairs")
    (ours, theirs), scored, errors = score_on_pairs(
        [Path(candidate).read_bytes(), data], plan, endpoint_url=endpoint_url
    )
    for error in errors.values():
        log.warning("champion comparison leaves out a pair: %s", error)
    mious = ours.mean_iou(), theirs.mean_iou()
    if scored == 0 or not all(math.isfinite(m) for m in mious):
        return refused(
            f"no pixel of this run's {len(plan.val)} validation pairs could be scored "
            f"({scored} decoded)"
        )
    log.info(
        "on this run's %d validation pairs: this version mIoU %.4f, version %s @%s %.4f",
        scored,
        mious[0],
        version,
        alias,
        mious[1],
    )
    return ChampionComparison(
        alias, version, champion_miou=mious[1], candidate_miou=mious[0], pairs=scored
    )
