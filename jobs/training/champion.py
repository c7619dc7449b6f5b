"""The alias gate's comparison: the new version and the version holding the alias (the
champion), scored on the new run's validation pairs by one computation.

A run's `val_miou` is measured on its own split; a new `--seed` or data root changes the split,
so the champion's `val_miou` tag is not comparable with it. Here both checkpoints (the champion
fetched from the registry with the batch jobs' loader, `jobs.common.model_source`) are scored
on the run's validation pairs (`TrainingData.val_root`, `.val`), read as the training datasets
read them (`jobs.common.pairs`: its class map, channels and `DecodeOptions`), by the evaluate
job's computation (`jobs.common.pair_scores`, `GATE_SETTINGS`: evaluate's CPU defaults in fp32,
so ``jobs/evaluate.py --amp off`` on these pairs reports the same figure). The pairs are
scored in Ray tasks of `CHUNK` pairs, so the driver never holds the images, whatever
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

from jobs.common.pair_scores import GATE_SETTINGS, PairScorer, ScoringSettings
from jobs.common.pairs import pair_items, read_pairs
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
            "champion_val_mean_iou": self.champion_miou,
            "val_mean_iou": self.candidate_miou,
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


def _score_chunk(items: list[dict], settings: dict, *checkpoints: bytes):
    """Ray task: (a K x K count matrix per checkpoint, pairs scored, {image: error})."""
    rows, errors = read_pairs(
        items,
        ClassMap.from_dict(settings["class_map"]),
        channels=settings["channels"],
        endpoint_url=settings["endpoint_url"],
        decode=settings["decode"],
    )
    pairs = list(zip(rows["image"], rows["mask"], strict=True))
    matrices = [
        PairScorer(load_checkpoint(data), settings["scoring"]).score(pairs).matrix
        for data in checkpoints
    ]
    return matrices, len(pairs), errors


def score_on_pairs(
    checkpoints: list[bytes],
    data,
    *,
    endpoint_url: str | None = None,
    scoring: ScoringSettings = GATE_SETTINGS,
) -> tuple[list[ConfusionMatrix], int, dict[str, str]]:
    """Each checkpoint's confusion matrix over the validation pairs of ``data`` (a
    `jobs.training.data_checks.TrainingData`; Ray tasks of `CHUNK` pairs, each read once and
    scored by every checkpoint), the pairs scored, and {image URI: error} of those that did not
    decode."""
    import ray

    refs = [ray.put(blob) for blob in checkpoints]  # once each, shared by every task
    items = pair_items(data.val_root, data.val)
    settings = {
        "class_map": data.class_map.to_dict(),
        "channels": data.in_channels,
        "endpoint_url": endpoint_url,
        "decode": data.decode,
        "scoring": scoring,
    }
    task = ray.remote(num_cpus=1)(_score_chunk)
    pending = [
        task.remote(items[i : i + CHUNK], settings, *refs) for i in range(0, len(items), CHUNK)
    ]
    k = data.class_map.num_classes
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
    training_data,
    tracking_uri: str | None = None,
    endpoint_url: str | None = None,
) -> ChampionComparison:
    """Score the version of `name` holding `alias` and the `candidate` checkpoint file on the
    validation pairs of ``training_data`` (`jobs.training.data_checks.TrainingData`); a champion that cannot be scored comes back `refused`, saying why."""
    from jobs.common.mlflow_store import mlflow_client
    from jobs.common.model_source import ModelSourceError, fetch_model

    client, _ = mlflow_client(tracking_uri)
    version = alias_holder(client, name, alias)
    if version is None:
        return ChampionComparison(alias, None)
    uri = f"models:/{name}/{version}"

    def refused(why: str) -> ChampionComparison:
        log.warning("not comparing with version %s @%s (%s): %s", version, alias, uri, why)
        return ChampionComparison(alias, version, refused=why)

    try:
        fetched = fetch_model(uri, tracking_uri=tracking_uri, endpoint_url=endpoint_url)
    except (ModelSourceError, ValueError, OSError) as exc:
        return refused(f"its checkpoint cannot be read ({exc})")
    data, champion = fetched.checkpoint, fetched.loaded
    problems = comparability_problems(champion, training_data.class_map, training_data.in_channels)
    ours = training_data.decode.pixel_values
    if champion.preprocess.pixel_values != ours:  # the gate decodes the pairs once, for both
        problems.append(
            f"it takes {champion.preprocess.pixel_values} pixels "
            f"({champion.preprocess.scheme}), this run {ours} ones"
        )
    if problems:
        return refused("; ".join(problems))
    if not training_data.val:
        return refused("this run has no validation pairs")
    (ours, theirs), scored, errors = score_on_pairs(
        [Path(candidate).read_bytes(), data], training_data, endpoint_url=endpoint_url
    )
    for error in errors.values():
        log.warning("champion comparison leaves out a pair: %s", error)
    mious = ours.mean_iou(), theirs.mean_iou()
    if scored == 0 or not all(math.isfinite(m) for m in mious):
        return refused(
            f"no pixel of this run's {len(training_data.val)} validation pairs could be scored "
            f"({scored} decoded)"
        )
    log.info(
        "on this run's %d validation pairs: this version mIoU %.4f, version %s @%s %.4f "
        "(as jobs/evaluate.py %s reports them)",
        scored,
        mious[0],
        version,
        alias,
        mious[1],
        GATE_SETTINGS.evaluate_flags(),
    )
    return ChampionComparison(
        alias, version, champion_miou=mious[1], candidate_miou=mious[0], pairs=scored
    )
