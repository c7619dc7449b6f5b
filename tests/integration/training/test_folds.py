"""`train --folds K` and `--fold i` end to end: a local Ray, a sqlite MLflow, tiny synthetic
data. The out-of-fold figures are recomputed here from each child run's checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jobs.train import main

pytestmark = pytest.mark.integration

GROUP_BY = r"^synth_\d\d\d([0-2])$"  # synth_0000 with synth_0010, 0001 with 0011; others alone
TINY = ["--base-width", "4", "--depth", "2", "--norm", "group", "--batch-size", "4",
        "--epochs", "1", "--num-workers", "1", "--amp", "off"]  # fmt: skip


@pytest.fixture(scope="module")
def fold_root(tmp_path_factory):
    from unet_core.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("folds")
    make_synthetic_dataset(root, num_images=12, size=32, seed=3)
    return root


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow keeps artifacts under ./mlruns
    return tmp_path


def run_job(argv: list[str], capsys) -> dict:
    code = main(argv)
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0, lines[-1:]
    return json.loads(lines[-1])


def artifact_json(client, run_id: str, path: str) -> dict:
    import mlflow

    return json.loads(
        Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path)).read_text()
    )


def score_member(run_id: str, root: Path, keys: list[str], tta: str):
    """The child's checkpoint scored here on its held-out keys: whole images, fp32, ``tta``."""
    import mlflow

    from jobs.common.pair_scores import PairScorer, ScoringSettings
    from unet_core.checkpoint import load_checkpoint
    from unet_core.data import read_image, read_mask
    from unet_core.metrics import ConfusionMatrix

    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoint/unet.pt")
    loaded = load_checkpoint(path)
    scorer = PairScorer(loaded, ScoringSettings(tile_size=0, tta=tta, amp=False))
    total = ConfusionMatrix(loaded.class_map.num_classes)
    for key in keys:
        image = read_image(root / "images" / f"{key}.png", channels=loaded.preprocess.channels)
        truth = read_mask(root / "masks" / f"{key}.png", loaded.class_map)
        total.matrix += scorer.confusion(image, truth)
    return total


def test_folds_train_children_and_score_out_of_fold(
    ray_local, mlflow_uri, fold_root, in_tmp, capsys
):
    from mlflow.tracking import MlflowClient

    summary = run_job(
        ["--data", str(fold_root), "--folds", "2", "--group-by", GROUP_BY, "--oof-tta", "hflip",
         "--run-name", "it-folds", "--storage-path", str(in_tmp / "runs"),
         "--register-as", "unet-folds", *TINY],
        capsys,
    )  # fmt: skip
    assert summary["concurrent_runs"] == 2  # 8 logical CPUs hold two runs of one worker
    folds = summary["folds"]
    assert [f["fold"] for f in folds] == [0, 1] and sum(f["pairs"] for f in folds) == 12

    client = MlflowClient()
    parent = client.get_run(summary["run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["folds"] == "2"
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
    )
    by_fold = {int(c.data.tags["fold"]): c for c in children}
    assert sorted(by_fold) == [0, 1]
    assert {by_fold[f["fold"]].info.run_id for f in folds} == {f["run_id"] for f in folds}

    pooled, held_out = None, []
    for fold in folds:
        child = by_fold[fold["fold"]]
        assert child.info.status == "FINISHED" and "val_miou" in child.data.metrics
        split = artifact_json(client, child.info.run_id, "split.json")
        assert split["fold"] == fold["fold"] and split["folds"] == 2
        assert not set(split["train"]) & set(split["val"])
        assert set(split["train_groups"]).isdisjoint(split["val_groups"])  # whole groups
        assert len(split["val"]) == fold["pairs"]
        held_out += split["val"]
        # the fold's figure: its own member on its own fold, recomputed here
        matrix = score_member(child.info.run_id, fold_root, split["val"], "hflip")
        assert fold["mean_iou"] == pytest.approx(matrix.mean_iou(), abs=1e-12)
        metric = parent.data.metrics[f"fold_{fold['fold']}_mean_iou"]
        assert metric == pytest.approx(matrix.mean_iou(), abs=1e-12)
        pooled = matrix if pooled is None else pooled.merge(matrix)
    assert sorted(held_out) == sorted(p.stem for p in (fold_root / "images").iterdir())
    # pooled over every held-out pixel: not the mean of the folds' figures
    assert summary["oof_mean_iou"] == pytest.approx(pooled.mean_iou(), abs=1e-12)
    assert parent.data.metrics["oof_mean_iou"] == pytest.approx(pooled.mean_iou(), abs=1e-12)
    assert summary["oof_pixel_accuracy"] == pytest.approx(pooled.pixel_accuracy(), abs=1e-12)
    names = json.loads((fold_root / "classes.json").read_text())["classes"]
    ious = pooled.iou()
    for i, c in enumerate(names):
        if np.isfinite(ious[i]):
            assert summary["oof_per_class_iou"][c["name"]] == pytest.approx(ious[i], abs=1e-12)
    folds_file = artifact_json(client, parent.info.run_id, "folds.json")
    assert [s["val"] for s in folds_file["splits"]] == [
        artifact_json(client, by_fold[i].info.run_id, "split.json")["val"] for i in (0, 1)
    ]
    # the K members registered as one version of an ensemble, gated on the out-of-fold figure
    assert summary["model_uri"] == "models:/unet-folds/1" and summary["alias_set"] is True
    version = client.get_model_version("unet-folds", "1")
    assert float(version.tags["val_miou"]) == pytest.approx(summary["oof_mean_iou"], abs=1e-6)
    assert version.tags["ensemble_members"] == "2"
    check_ensemble_is_mean_softmax(summary["run_id"], [by_fold[i].info.run_id for i in (0, 1)])


def test_fold_i_trains_one_unregistered_run(ray_local, mlflow_uri, fold_root, in_tmp, capsys):
    from mlflow.tracking import MlflowClient

    from jobs.training.folds import fold_pairs
    from unet_core.data import pair_images_and_masks

    summary = run_job(
        ["--data", str(fold_root), "--folds", "2", "--fold", "1", "--group-by", GROUP_BY,
         "--run-name", "it-fold1", "--storage-path", str(in_tmp / "runs"),
         *TINY],
        capsys,
    )  # fmt: skip
    assert summary["fold"] == 1 and summary["model_uri"] is None
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("unet").experiment_id])
    assert [r.info.run_id for r in runs] == [summary["run_id"]]  # one run, no parent
    assert client.search_registered_models() == []
    split = artifact_json(client, summary["run_id"], "split.json")
    expected = fold_pairs(pair_images_and_masks(fold_root), 2, seed=0, group_by=GROUP_BY)[1]
    assert split["fold"] == 1 and split["val"] == [p.key for p in expected]
    assert summary["pairs"] == {"train": 12 - len(expected), "val": len(expected)}


def check_ensemble_is_mean_softmax(parent_id: str, child_ids: list[str]) -> None:
    """models:/unet-folds@champion loads as an ensemble of the children's best checkpoints, in
    fold order, and predicts the log of their mean softmax."""
    import mlflow
    import torch

    from jobs.common.model_source import fetch_model
    from unet_core.checkpoint import load_checkpoint

    ensemble = fetch_model("models:/unet-folds@champion").loaded
    assert ensemble.members == 2
    members = [
        load_checkpoint(
            mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoint/unet.pt")
        )
        for run_id in child_ids
    ]
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        got = ensemble.model.eval()(x)
        probs = [torch.softmax(m.model.eval()(x).float(), dim=1) for m in members]
    torch.testing.assert_close(got.exp(), (probs[0] + probs[1]) / 2, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(probs[0], probs[1], atol=1e-4)  # two different members
