"""The alias gate compares like with like: at the end of a run the version holding the alias is
scored on this run's validation pairs (a local Ray, a sqlite MLflow, the synthetic data)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from jobs.train import main
from tests.integration.inference.helpers import make_checkpoint
from tests.integration.training.test_train import TINY, run_job, val_miou_of

pytestmark = pytest.mark.integration


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow keeps artifacts under ./mlruns
    return tmp_path


def args(root: Path, tmp: Path, name: str, *extra: str) -> list[str]:
    # fp32 (--amp off): val_miou_of recomputes the workers' validation in fp32
    return ["--data", str(root), "--epochs", "1", "--lr", "1e-2", "--num-workers", "1",
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


def test_the_champion_is_scored_on_the_new_runs_split(
    ray_local, mlflow_uri, synthetic_root, in_tmp, capsys
):
    from mlflow.tracking import MlflowClient

    code, first = run_job(args(synthetic_root, in_tmp, "gate-seed0", "--seed", "0"), capsys)
    assert code == 0 and first["alias_set"] and first["model_version"] == "1"
    code, second = run_job(args(synthetic_root, in_tmp, "gate-seed1", "--seed", "1"), capsys)
    assert code == 0 and second["model_version"] == "2"
    split1, split2 = val_keys(first["run_id"]), val_keys(second["run_id"])
    assert split1 != split2  # a new seed, a new split: the val_miou tags are not comparable

    decision = second["alias_decision"]
    assert decision["compared"] is True and decision["champion_version"] == "1"
    assert decision["val_pairs"] == len(split2) and decision["not_compared_because"] is None
    # both figures, recomputed here on the second run's validation pairs
    champion_miou, tolerance = val_miou_of(registered("1"), Path(synthetic_root), split2)
    assert decision["champion_val_miou"] == pytest.approx(champion_miou, abs=tolerance)
    # ...which is not the champion's val_miou of its own split: this check tells them apart
    assert abs(champion_miou - first["val_miou"]) > 2 * tolerance
    new_miou, tolerance = val_miou_of(registered("2"), Path(synthetic_root), split2)
    assert decision["val_miou"] == pytest.approx(new_miou, abs=tolerance)
    assert second["val_miou"] == pytest.approx(new_miou, abs=tolerance)  # the workers' (fp32)

    moved = decision["val_miou"] >= decision["champion_val_miou"]
    assert second["alias_set"] is decision["alias_set"] is moved
    assert decision["reason"] == second["alias_reason"]
    assert ("not below" if moved else "is below") in second["alias_reason"]
    assert f"on this run's {len(split2)} validation pairs" in second["alias_reason"]
    client = MlflowClient()
    holder = client.get_model_version_by_alias("unet", "champion")
    assert str(holder.version) == ("2" if moved else "1")
    tags = client.get_model_version("unet", "2").tags
    assert tags["champion_version"] == "1"
    assert tags["champion_val_miou_on_this_split"] == f"{decision['champion_val_miou']:.6f}"
    assert tags["val_miou_on_this_split"] == f"{decision['val_miou']:.6f}"
    assert tags["val_pairs_compared"] == str(len(split2))
    assert float(tags["val_miou"]) == pytest.approx(second["val_miou"], abs=1e-6)
    assert tags["alias_decision"] == second["alias_reason"]


def test_a_champion_with_other_classes_is_not_compared(
    ray_local, mlflow_uri, synthetic_root, in_tmp, capsys, caplog
):
    import mlflow
    from mlflow.tracking import MlflowClient

    from jobs.training.registry import log_and_register
    from unet_core.classes import ClassMap
    from unet_core.data import load_class_map

    ours = load_class_map(synthetic_root)
    renamed = dataclasses.replace(ours.classes[1], name="blob")
    theirs = ClassMap((ours.classes[0], renamed, *ours.classes[2:]), ours.ignore_values)
    mlflow.set_experiment("unet")  # the job's experiment (it resumes its run in it)
    with mlflow.start_run() as run:  # the champion: registered as the end of a run does
        champion = log_and_register(
            run_id=run.info.run_id,
            checkpoint_path=make_checkpoint(in_tmp / "other.pt", theirs),
            name="unet",
            alias="champion",
            val_miou=0.5,
            epoch=1,
        )
    assert champion.alias_set and champion.version == "1"

    assert main(args(synthetic_root, in_tmp, "gate-classes")) == 0
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
