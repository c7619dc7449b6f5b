"""The training and validation sets as MLflow dataset inputs of a run, logged without reading a
pixel: one dataset per split (context "training" / "validation"), named after its root and
split, with the root as its source (a local path or an s3:// URI), a digest that changes when
the listing or the class map does, a profile (pairs, channels, class map, a hash of the
listing alone) and a schema (the key, image and mask columns of the listing).

`jobs.training.tracking.log_run_inputs` logs them; a resumed run logs only what it lacks.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import PurePosixPath
from typing import Any

from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag
from mlflow.types import ColSpec, DataType, Schema
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from unet_core.classes import ClassMap
from unet_core.data import Pair

CONTEXTS = {"train": "training", "val": "validation"}
"""Split -> MLflow's dataset context (the `mlflow.data.context` input tag)."""
SPLIT_NAMES = {"train": "train", "val": "validation"}
PAIR_SCHEMA = Schema(
    [
        ColSpec(DataType.string, "key"),  # the case: relative path without extension
        ColSpec(DataType.string, "image"),  # root-relative paths
        ColSpec(DataType.string, "mask"),
    ]
)


def listing_sha256(pairs: list[Pair]) -> str:
    """sha256 of the sorted (image, mask) paths: the same files give the same hash, wherever
    the root is and in whatever order they were listed."""
    lines = sorted(f"{p.image}\t{p.mask}" for p in pairs)
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def root_name(root: str) -> str:
    """The last part of a root ("s3://bucket/sets/isbi/" -> "isbi"; a bucket root -> bucket)."""
    path = root.split("://", 1)[-1].rstrip("/")
    return PurePosixPath(path).name or path or "data"


class PairListing(MetaDataset):
    """One split as an MLflow dataset: metadata only (MetaDataset), plus a profile."""

    def __init__(
        self, *, root: str, split: str, pairs: list[Pair], class_map: ClassMap, channels: int
    ) -> None:
        listing = listing_sha256(pairs)
        self._profile = {
            "pairs": len(pairs),
            "channels": channels,
            "class_map": class_map.to_dict(),
            "listing_sha256": listing,
        }
        # The store keeps one dataset per (experiment, name, digest): the digest covers the
        # root and the class map too, so that a copy elsewhere or a new class map is its own.
        digest = hashlib.sha256(
            json.dumps([root, listing, class_map.to_dict()], sort_keys=True).encode("utf-8")
        ).hexdigest()[:16]
        super().__init__(
            _source(root),
            name=f"{root_name(root)}-{SPLIT_NAMES[split]}",
            digest=digest,
            schema=PAIR_SCHEMA,
        )

    @property
    def profile(self) -> dict[str, Any]:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        config = super().to_dict()  # name, digest, source, source_type, schema
        config["profile"] = json.dumps(self._profile)
        return config


def _source(root: str):
    """LocalArtifactDatasetSource for a path, S3ArtifactDatasetSource for s3://."""
    with warnings.catch_warnings():  # "" and "file" both resolve a path: the same class
        warnings.filterwarnings("ignore", message=".*can be interpreted in multiple ways.*")
        return resolve_dataset_source(root)


def split_datasets(data) -> dict[str, PairListing]:
    """{"train": ..., "val": ...} of a `jobs.training.data_checks.TrainingData`."""
    return {
        split: PairListing(
            root=root,
            split=split,
            pairs=pairs,
            class_map=data.class_map,
            channels=data.in_channels,
        )
        for split, root, pairs in (
            ("train", data.root, data.train),
            ("val", data.val_root, data.val),
        )
    }


def dataset_inputs(datasets: dict[str, PairListing], logged: list) -> list[DatasetInput]:
    """DatasetInputs for the splits the run does not hold yet (`logged`: its
    `run.inputs.dataset_inputs`), each tagged with its context."""
    have = {(d.dataset.name, d.dataset.digest, context_of(d)) for d in logged}
    out = []
    for split, dataset in datasets.items():
        context = CONTEXTS[split]
        if (dataset.name, dataset.digest, context) in have:
            continue
        entity = dataset._to_mlflow_entity()  # what mlflow.log_input logs
        out.append(DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)]))
    return out


def context_of(dataset_input) -> str | None:
    """The `mlflow.data.context` tag of a logged DatasetInput ("training", "validation")."""
    return next((t.value for t in dataset_input.tags if t.key == MLFLOW_DATASET_CONTEXT), None)
