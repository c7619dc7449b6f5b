"""The alias gate compares like with like: at the end of a run the version holding the alias is
scored on this run's validation pairs (a local Ray, a sqlite MLflow, the synthetic data), by the
computation whose figure `jobs/evaluate.py` reports.

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
from tests.integration.inference.helpers import constant_checkpoint, make_checkpoint, run_main
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


def registered_file(version: str) -> Path:
    import mlflow

    (checkpoint,) = Path(mlflow.artifacts.download_artifacts(f"models:/unet/{version}")).glob(
        "**/unet.pt"
    )
    return checkpoint


def registered(version: str):
    from unet_core.checkpoint import load_checkpoint

    return load_checkpoint(registered_file(version))


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


def assert_evaluate_reports_the_gates_figure(root: Path, version: str, capsys) -> None:
    """The gate's computation (`score_on_pairs`, its Ray tasks) and `jobs/evaluate.py` run
    with the flags of the same settings give the same confusion matrix over every pair of
    ``root``: with the gate's own settings (whole 64 x 64 images, fp32), and tiled."""
    from jobs import evaluate
    from jobs.common.pair_scores import GATE_SETTINGS
    from jobs.training.champion import score_on_pairs
    from jobs.training.data_checks import gather_training_data

    data, _ = gather_training_data(str(root), val_fraction=0.25, seed=0)
    every = dataclasses.replace(data, val=[*data.train, *data.val])  # all 16 pairs
    checkpoint = registered_file(version).read_bytes()
    matrices = []
    for settings in (
        GATE_SETTINGS,
        dataclasses.replace(GATE_SETTINGS, tile_size=48, tile_overlap=8),
    ):
        (gate,), scored, errors = score_on_pairs([checkpoint], every, scoring=settings)
        assert (scored, errors) == (16, {})
        flags = settings.evaluate_flags().split()
        assert flags[flags.index("--amp") + 1] == "off"  # fp32: the same on every CPU
        code, report = run_main(
            evaluate.main, ["--model", f"models:/unet/{version}", "--data", root, *flags], capsys
        )
        assert code == 0 and report["ok"] == 16, report
        assert report["confusion_matrix"] == gate.matrix.tolist(), settings
        assert report["mean_iou"] == pytest.approx(gate.mean_iou(), abs=1e-12)
        matrices.append(gate.matrix.tolist())
    assert matrices[0] != matrices[1]  # tiles change the prediction: the settings are not idle


def assert_decision(summary: dict, *, champion: str, moved: bool, pairs: int) -> dict:
    """The summary's alias decision, the registry's alias holder and the new version's tags
    agree with a comparison that moved (or kept) the alias."""
    from mlflow.tracking import MlflowClient

    decision = summary["alias_decision"]
    assert decision["compared"] is True and decision["not_compared_because"] is None
    assert decision["champion_version"] == champion and decision["val_pairs"] == pairs
    ours, theirs = decision["val_mean_iou"], decision["champion_val_mean_iou"]
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
    # BatchNorm: the gate, as the batch jobs, predicts with it folded into the convolutions
    trained = args(root, in_tmp, "gate-trained", "--seed", "0", "--norm", "batch")
    code, first = run_job(trained, capsys)
    assert code == 0 and first["model_version"] == "2"
    split1 = val_keys(first["run_id"])
    decision = assert_decision(first, champion="1", moved=True, pairs=len(split1))
    assert decision["champion_val_mean_iou"] == pytest.approx(
        constant_miou(root, split1, class_map, 1), abs=1e-12
    )
    new_miou, tolerance = val_miou_of(registered("2"), root, split1)
    assert decision["val_mean_iou"] == pytest.approx(new_miou, abs=tolerance)
    assert first["val_mean_iou"] == pytest.approx(new_miou, abs=tolerance)  # the workers' (fp32)
    assert_evaluate_reports_the_gates_figure(root, "2", capsys)

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
    assert decision["champion_val_mean_iou"] == pytest.approx(champion_miou, abs=tolerance)
    # ...which is not its val_miou of its own split: this check tells them apart
    assert abs(champion_miou - first["val_mean_iou"]) > 2 * tolerance
    new_miou, tolerance = val_miou_of(registered("3"), root, split2)
    assert decision["val_mean_iou"] == pytest.approx(new_miou, abs=tolerance)


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
    assert decision["champion_val_mean_iou"] is None and decision["val_mean_iou"] is None
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
