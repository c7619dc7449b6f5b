"""The alias gate compares like with like: at the end of a run the version holding the alias is
scored on this run's validation pairs (a local Ray, a sqlite MLflow, the synthetic data), by the
computation `jobs/evaluate.py` reports.

Both decisions happen by construction: a constant champion (every pixel one small class) is
worse than any trained candidate, and a trained champion is better than a candidate that barely
moved from its random start (--lr 1e-9)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from jobs.train import main
from tests.integration.inference.helpers import (
    constant_checkpoint,
    make_checkpoint,
    register_checkpoint,
    run_main,
)
from tests.integration.training.test_train import TINY, run_job, val_miou_of

pytestmark = pytest.mark.integration


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow keeps artifacts under ./mlruns
    return tmp_path


def args(root: Path, tmp: Path, name: str, *extra: str) -> list[str]:
    # fp32 (--amp off): val_miou_of recomputes the workers' validation in fp32
    return ["--data", str(root), "--epochs", "2", "--lr", "1e-2", "--num-workers", "1",
            "--run-name", name, "--storage-path", str(tmp / "runs"), "--amp", "off",
            *TINY, *extra]  # fmt: skip


def registered(version: str):
    import mlflow

    from unet_core.checkpoint import load_checkpoint

    (checkpoint,) = Path(mlflow.artifacts.download_artifacts(f"models:/unet/{version}")).glob(
        "**/unet.pt"
    )
    return load_checkpoint(checkpoint)


def val_keys(run_id: str) -> list[str]:
    import mlflow

    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="split.json")
    return json.loads(Path(path).read_text())["val"]


def register_champion(checkpoint: Path, *, val_miou: float) -> str:
    """Register ``checkpoint`` as the end of a run does, in the job's experiment, holding
    @champion with a `val_miou` tag of ``val_miou`` (of its own, other split)."""
    import mlflow

    from jobs.training.registry import log_and_register

    mlflow.set_experiment("unet")  # the job's experiment (it resumes its run in it)
    with mlflow.start_run() as run:
        champion = log_and_register(
            run_id=run.info.run_id,
            checkpoint_path=checkpoint,
            name="unet",
            alias="champion",
            val_miou=val_miou,
            epoch=1,
        )
    assert champion.alias_set
    return champion.version


def constant_miou(root: Path, keys: list[str], class_map, predicted: int) -> float:
    """Mean IoU of a model that predicts class ``predicted`` everywhere, by hand."""
    from unet_core.data import read_mask
    from unet_core.metrics import ConfusionMatrix

    confusion = ConfusionMatrix(class_map.num_classes)
    for key in keys:
        truth = read_mask(root / "masks" / f"{key}.png", class_map)
        confusion.update(np.full_like(truth, predicted), truth)
    return confusion.mean_iou()


def assert_decision(summary: dict, *, champion: str, moved: bool, pairs: int) -> dict:
    """The summary's alias decision, the registry's alias holder and the new version's tags
    agree with a comparison that moved (or kept) the alias."""
    from mlflow.tracking import MlflowClient

    decision = summary["alias_decision"]
    assert decision["compared"] is True and decision["not_compared_because"] is None
    assert decision["champion_version"] == champion and decision["val_pairs"] == pairs
    ours, theirs = decision["val_miou"], decision["champion_val_miou"]
    assert (ours > theirs) if moved else (ours < theirs)
    assert summary["alias_set"] is decision["alias_set"] is moved
    assert decision["reason"] == summary["alias_reason"]
    assert f"on this run's {pairs} validation pairs" in summary["alias_reason"]
    assert ("not below" if moved else "is below") in summary["alias_reason"]
    client = MlflowClient()
    holder = client.get_model_version_by_alias("unet", "champion").version
    assert str(holder) == (summary["model_version"] if moved else champion)
    tags = client.get_model_version("unet", summary["model_version"]).tags
    assert tags["champion_version"] == champion
    assert tags["champion_val_miou_on_this_split"] == f"{theirs:.6f}"
    assert tags["val_miou_on_this_split"] == f"{ours:.6f}"
    assert tags["val_pairs_compared"] == str(pairs)
    assert tags["alias_decision"] == summary["alias_reason"]
    assert "champion_not_compared" not in tags
    return decision


def test_a_worse_champion_loses_the_alias_and_a_better_one_keeps_it(
    ray_local, mlflow_uri, synthetic_root, in_tmp, capsys
):
    from unet_core.classes import ClassMap

    root = Path(synthetic_root)
    class_map = ClassMap.from_file(root / "classes.json")
    # v1: every pixel "ellipse". Its val_miou tag (0.99, of another split) would beat any run:
    # the gate must score it on the new run's pairs instead.
    constant = constant_checkpoint(in_tmp / "constant.pt", class_map, predict_class=1)
    assert register_champion(constant, val_miou=0.99) == "1"

    # A trained run beats the constant champion: the alias moves to it.
    code, first = run_job(args(root, in_tmp, "gate-trained", "--seed", "0"), capsys)
    assert code == 0 and first["model_version"] == "2"
    split1 = val_keys(first["run_id"])
    decision = assert_decision(first, champion="1", moved=True, pairs=len(split1))
    assert decision["champion_val_miou"] == pytest.approx(
        constant_miou(root, split1, class_map, 1), abs=1e-12
    )
    new_miou, tolerance = val_miou_of(registered("2"), root, split1)
    assert decision["val_miou"] == pytest.approx(new_miou, abs=tolerance)
    assert first["val_miou"] == pytest.approx(new_miou, abs=tolerance)  # the workers' (fp32)

    # A run that barely leaves its random start is below the trained champion: it stays.
    code, second = run_job(
        args(root, in_tmp, "gate-untrained", "--seed", "1", "--epochs", "1", "--lr", "1e-9"),
        capsys,
    )
    assert code == 0 and second["model_version"] == "3"
    split2 = val_keys(second["run_id"])
    assert split1 != split2  # a new seed, a new split: the val_miou tags are not comparable
    decision = assert_decision(second, champion="2", moved=False, pairs=len(split2))
    # the champion's figure is recomputed on the second run's pairs...
    champion_miou, tolerance = val_miou_of(registered("2"), root, split2)
    assert decision["champion_val_miou"] == pytest.approx(champion_miou, abs=tolerance)
    # ...which is not its val_miou of its own split: this check tells them apart
    assert abs(champion_miou - first["val_miou"]) > 2 * tolerance
    new_miou, tolerance = val_miou_of(registered("3"), root, split2)
    assert decision["val_miou"] == pytest.approx(new_miou, abs=tolerance)


def test_a_champion_with_other_classes_is_not_compared(
    ray_local, mlflow_uri, synthetic_root, in_tmp, capsys, caplog
):
    from mlflow.tracking import MlflowClient

    from unet_core.classes import ClassMap
    from unet_core.data import load_class_map

    ours = load_class_map(synthetic_root)
    renamed = dataclasses.replace(ours.classes[1], name="blob")
    theirs = ClassMap((ours.classes[0], renamed, *ours.classes[2:]), ours.ignore_values)
    assert register_champion(make_checkpoint(in_tmp / "other.pt", theirs), val_miou=0.5) == "1"

    assert main(args(synthetic_root, in_tmp, "gate-classes", "--epochs", "1")) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out.strip().splitlines()[-1])
    decision = summary["alias_decision"]
    assert summary["alias_set"] is False and decision["compared"] is False
    assert decision["champion_val_miou"] is None and decision["val_miou"] is None
    why = decision["not_compared_because"]
    assert f"('blob', {renamed.value})" in why and f"('{ours.classes[1].name}'," in why
    assert summary["alias_reason"].startswith("version 1 @champion cannot be compared")
    assert "--force-alias" in summary["alias_reason"]
    assert "alias @champion: not set (version 1 @champion cannot be compared" in err
    assert f"not comparing with version 1 @champion (models:/unet/1): {why}" in caplog.text
    client = MlflowClient()
    assert str(client.get_model_version_by_alias("unet", "champion").version) == "1"
    tags = client.get_model_version("unet", "2").tags
    assert tags["champion_version"] == "1" and tags["champion_not_compared"] == why
    assert "champion_val_miou_on_this_split" not in tags


def batchnorm_checkpoint(path: Path, class_map) -> Path:
    """A small BatchNorm UNet whose running statistics are far from (0, 1), so that folding
    them into the convolutions (as the batch jobs do) is not a no-op."""
    import torch

    from unet_core.checkpoint import load_checkpoint, save_checkpoint

    loaded = load_checkpoint(make_checkpoint(path, class_map, base_width=4, seed=3))
    generator = torch.Generator().manual_seed(0)
    for module in loaded.model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.3)
            module.running_var.copy_(torch.rand(n, generator=generator) * 2 + 0.2)
    save_checkpoint(
        path,
        loaded.model,
        model_config=loaded.model_config,
        class_map=loaded.class_map,
        preprocess=loaded.preprocess,
    )
    return path


@pytest.mark.parametrize(
    "tiles", [(), ("--tile-size", "48", "--tile-overlap", "8")], ids=["whole", "tiled"]
)
def test_the_gate_scores_a_model_as_evaluate_reports_it(
    tiles, ray_local, mlflow_uri, synthetic_root, tmp_path, capsys
):
    from jobs import evaluate
    from jobs.common.pair_scores import GATE_SETTINGS
    from jobs.training.champion import score_on_pairs
    from jobs.training.data_checks import gather_training_data
    from unet_core.classes import ClassMap

    class_map = ClassMap.from_file(synthetic_root / "classes.json")
    checkpoint = batchnorm_checkpoint(tmp_path / "bn.pt", class_map)
    register_checkpoint(checkpoint, tmp_path / "art")
    # the gate's settings, as the flags evaluate takes (64 x 64 images: tiled with 48)
    settings = dataclasses.replace(GATE_SETTINGS, tile_size=48, tile_overlap=8) if tiles else None
    flags = (settings or GATE_SETTINGS).evaluate_flags().split()
    assert "--amp" in flags and flags[flags.index("--amp") + 1] == "off"

    data, _ = gather_training_data(str(synthetic_root), val_fraction=0.25, seed=0)
    every = dataclasses.replace(data, val=[*data.train, *data.val])  # all 16 pairs
    (gate,), scored, errors = score_on_pairs(
        [checkpoint.read_bytes()], every, **({"scoring": settings} if settings else {})
    )
    assert (scored, errors) == (16, {})

    code, report = run_main(
        evaluate.main,
        ["--model", "models:/unet@champion", "--data", synthetic_root, *flags],
        capsys,
    )
    assert code == 0 and report["ok"] == 16, report
    assert report["confusion_matrix"] == gate.matrix.tolist()
    assert report["mean_iou"] == pytest.approx(gate.mean_iou(), abs=1e-12)
    assert 0.05 < gate.mean_iou() < 0.95  # a figure that can tell two computations apart
