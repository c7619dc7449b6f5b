"""train --init-from end to end: a local Ray, a sqlite MLflow, tiny 32 x 32 sets. A parent is
trained and registered; a child starts from models:/unet@champion with the same class map (every
weight its parent's at step 0) or another one (the head re-initialised, the rest the parent's),
and the lineage is on both sides (run and version tags, the parent's children)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from jobs.train import main
from unet_core.checkpoint import checkpoint_to_bytes, load_checkpoint
from unet_core.classes import ClassMap
from unet_core.config import ModelConfig, Preprocessing
from unet_core.model import build_model
from unet_core.synthetic import make_synthetic_dataset

pytestmark = pytest.mark.integration

TINY = ["--base-width", "4", "--depth", "2", "--norm", "group", "--batch-size", "4",
        "--epochs", "1", "--amp", "off", "--num-workers", "1"]  # fmt: skip
STILL = ["--lr", "1e-12", "--max-grad-norm", "1e-9"]
"""A step that moves no weight by more than ~1e-12: the registered weights are the start's."""


def train(argv: list[str], capsys) -> tuple[int, dict]:
    code = main(argv)
    lines = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(lines[-1])


def registered(uri: str):
    (path,) = Path(mlflow.artifacts.download_artifacts(uri)).glob("**/unet.pt")
    return load_checkpoint(path)


@pytest.fixture(scope="module")
def parent(ray_local, tmp_path_factory):
    """A registered parent (models:/unet/1 @champion) trained on 2 classes, in a sqlite store
    shared by this module's tests (the working directory holds its artifacts)."""
    tmp = tmp_path_factory.mktemp("init-from")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    root = tmp / "two"
    make_synthetic_dataset(root, num_images=8, size=32, num_classes=2, seed=0)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp)
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("MLFLOW_REGISTRY_URI", uri)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        with contextlib.redirect_stdout(io.StringIO()) as out:
            code = main(
                ["--data", str(root), "--run-name", "parent", "--storage-path",
                 str(tmp / "runs"), *TINY]
            )  # fmt: skip
        summary = json.loads(out.getvalue().strip().splitlines()[-1])
        assert code == 0 and summary["model_uri"] == "models:/unet/1", summary
        yield tmp, root, summary


def child_run(argv: list[str], name: str, tmp_path: Path, capsys) -> dict:
    code, summary = train(
        ["--init-from", "models:/unet@champion", "--register-as", name, "--run-name", name,
         "--storage-path", str(tmp_path / "runs"), *argv],
        capsys,
    )  # fmt: skip
    assert code == 0, summary
    return summary


def test_same_class_map_starts_from_every_parent_weight(parent, capsys):
    tmp_path, root, parent_summary = parent
    # the flags that match the parent's architecture (or are left out) are accepted; two workers
    summary = child_run(
        ["--data", str(root), "--epochs", "1", "--num-workers", "2", "--base-width", "4",
         "--batch-size", "2", *STILL],
        "same",
        tmp_path,
        capsys,
    )  # fmt: skip
    ours, theirs = registered(summary["model_uri"]), registered("models:/unet/1")
    assert ours.model_config == theirs.model_config
    assert ours.preprocess == theirs.preprocess  # the parent's normalisation
    for key, value in theirs.model.state_dict().items():
        torch.testing.assert_close(ours.model.state_dict()[key], value, atol=1e-7, rtol=0)

    client = MlflowClient()
    lineage = {
        "parent_model": "models:/unet@champion",
        "parent_version": "1",
        "parent_run_id": parent_summary["run_id"],
    }
    run = client.get_run(summary["run_id"])
    assert {k: run.data.tags.get(k) for k in lineage} == lineage
    assert run.data.params["init_from"] == "models:/unet@champion"
    assert run.data.params["init_from_resolved"] == "models:/unet/1"
    version = client.get_model_version("same", "1")
    assert {k: version.tags.get(k) for k in lineage} == lineage
    children = client.get_model_version("unet", "1").tags["children_runs"]
    assert summary["run_id"] in children.split(",")


def test_other_class_map_reinitialises_the_head(parent, capsys):
    tmp_path, _, _ = parent
    three = tmp_path / "three"
    make_synthetic_dataset(three, num_images=8, size=32, num_classes=3, seed=1)
    summary = child_run(["--data", str(three), *TINY, *STILL], "other", tmp_path, capsys)
    ours, theirs = registered(summary["model_uri"]), registered("models:/unet/1")
    assert ours.class_map.num_classes == 3 and theirs.class_map.num_classes == 2
    mine = ours.model.state_dict()
    assert mine["head.weight"].shape[0] == 3
    for key, value in theirs.model.state_dict().items():
        if not key.startswith("head."):
            torch.testing.assert_close(mine[key], value, atol=1e-7, rtol=0)
    assert ours.preprocess == theirs.preprocess


def test_contradicting_architecture_refused(ray_local, tmp_path, capsys):
    """A checkpoint file as the parent: a flag that contradicts its architecture is refused,
    naming both values, before any run starts."""
    config = ModelConfig(in_channels=3, num_classes=2, base_width=4, depth=2, norm="group")
    parent = tmp_path / "parent.pt"
    parent.write_bytes(
        checkpoint_to_bytes(
            build_model(config),
            model_config=config,
            class_map=ClassMap.from_names(["a", "b"]),
            preprocess=Preprocessing.for_channels(3),
        )
    )
    code = main(["--data", str(tmp_path / "nowhere"), "--init-from", str(parent),
                 "--base-width", "8", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "--base-width 8 (the parent's: 4)" in err, err
