"""The splits as MLflow dataset inputs: digests follow the listing, a resumed run logs no
duplicate (a real sqlite MLflow store; no Ray)."""

from __future__ import annotations

import json

import pytest

from jobs.training.data_checks import TrainingData
from jobs.training.mlflow_inputs import PairListing, context_of, root_name, split_datasets
from unet_core.classes import ClassMap
from unet_core.data import Pair

BINARY = ClassMap.from_dict(
    {"classes": [{"name": "background", "value": 0}, {"name": "object", "value": 255}]}
)


def pairs(*stems: str) -> list[Pair]:
    return [Pair(f"images/{s}.png", f"masks/{s}.png", s) for s in stems]


def training_data(
    root: str, train: list[Pair], val: list[Pair], class_map: ClassMap = BINARY
) -> TrainingData:
    return TrainingData(
        root=root, class_map=class_map, train=train, val=val, val_root=root, in_channels=3
    )


def listing(root="/data/set", stems=("a", "b", "c"), class_map=BINARY) -> PairListing:
    return PairListing(
        root=root, split="train", pairs=pairs(*stems), class_map=class_map, channels=3
    )


def test_digest_follows_the_listing_not_its_order():
    first = listing()
    assert first.digest == listing(stems=("c", "a", "b")).digest  # listing order is no matter
    assert len(first.digest) == 16 and int(first.digest, 16) >= 0
    changed = {
        "a pair less": listing(stems=("a", "b")),
        "a pair renamed": listing(stems=("a", "b", "d")),
        "another root": listing(root="s3://bucket/set"),
        "another class map": listing(class_map=ClassMap.from_dict({"classes": [
            {"name": "background", "value": 0}, {"name": "cell", "value": 255}]})),
    }  # fmt: skip
    for why, other in changed.items():
        assert other.digest != first.digest, why
    # the hash of the listing alone is the same wherever the root is
    assert (
        listing(root="s3://bucket/set").profile["listing_sha256"] == first.profile["listing_sha256"]
    )


def test_a_split_as_mlflow_stores_it():
    entity = listing(root="s3://bucket/sets/isbi/")._to_mlflow_entity()
    assert entity.name == "isbi-train" and entity.source_type == "s3"
    assert json.loads(entity.source) == {"uri": "s3://bucket/sets/isbi/"}
    profile = json.loads(entity.profile)
    assert profile["pairs"] == 3 and profile["channels"] == 3
    assert profile["class_map"] == BINARY.to_dict()
    schema = json.loads(entity.schema)["mlflow_colspec"]
    assert [c["name"] for c in schema] == ["key", "image", "mask"]
    local = listing(root="/data/set")._to_mlflow_entity()
    assert local.source_type == "local" and json.loads(local.source) == {"uri": "/data/set"}


@pytest.mark.parametrize(
    ("root", "name"),
    [("/data/isbi", "isbi"), ("s3://bucket/a/b/", "b"), ("s3://bucket", "bucket"), ("/", "data")],
)
def test_root_names(root, name):
    assert root_name(root) == name


def test_resumed_run_logs_each_split_once(mlflow_uri, tmp_path):
    from mlflow.tracking import MlflowClient

    from jobs.training.tracking import log_run_inputs

    client = MlflowClient(mlflow_uri)
    run_id = client.create_run(client.create_experiment("inputs")).info.run_id
    root = str(tmp_path / "set")
    first = training_data(root, pairs("a", "b", "c"), pairs("d"))

    def inputs() -> list[tuple[str, str, str]]:
        return sorted(
            (d.dataset.name, d.dataset.digest, context_of(d))
            for d in client.get_run(run_id).inputs.dataset_inputs
        )

    def log(data: TrainingData) -> None:
        log_run_inputs(mlflow_uri, run_id, params={"epochs": 1}, artifacts={}, data=data)

    log(first)
    logged = inputs()
    assert [(name, context) for name, _, context in logged] == [
        ("set-train", "training"),
        ("set-validation", "validation"),
    ]
    log(first)  # a resumed run on the same data
    assert inputs() == logged
    log(training_data(root, pairs("a", "b"), pairs("d")))  # resumed after a training pair went away
    now = inputs()
    assert len(now) == 3 and set(logged) <= set(now)
    new_train = [d for d in now if d not in logged]
    assert new_train[0][0] == "set-train" and new_train[0][2] == "training"


def test_split_datasets_with_their_own_validation_root():
    data = TrainingData(
        root="/data/train",
        class_map=BINARY,
        train=pairs("a", "b"),
        val=pairs("c"),
        val_root="s3://bucket/val",
        in_channels=1,
    )
    sets = split_datasets(data)
    assert sets["train"].name == "train-train" and sets["val"].name == "val-validation"
    assert sets["val"].source.uri == "s3://bucket/val" and sets["val"].profile["pairs"] == 1
    assert sets["train"].profile["channels"] == 1
