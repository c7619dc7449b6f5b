"""The training job end to end: a local Ray (2 CPU workers), a sqlite MLflow, synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jobs.train import main

pytestmark = pytest.mark.integration

TINY = ["--base-width", "8", "--depth", "2", "--norm", "group", "--batch-size", "4"]


def run_job(argv: list[str], capsys) -> tuple[int, dict | None]:
    """Run jobs/train.py in-process; the last stdout line is its JSON summary."""
    code = main(argv)
    lines = capsys.readouterr().out.strip().splitlines()
    return code, (json.loads(lines[-1]) if code == 0 else None)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow keeps artifacts under ./mlruns
    return tmp_path


def test_train_logs_registers_and_loads(ray_local, mlflow_uri, synthetic_root, in_tmp, capsys):
    import mlflow
    from mlflow.tracking import MlflowClient

    from jobs.training.registry import decide_alias
    from unet_core.checkpoint import load_checkpoint
    from unet_core.predict import predict

    epochs = 3
    code, summary = run_job(
        ["--data", str(synthetic_root), "--epochs", str(epochs), "--lr", "1e-2",
         "--num-workers", "2", "--run-name", "it-train", "--storage-path", str(in_tmp / "runs"),
         *TINY],
        capsys,
    )  # fmt: skip
    assert code == 0
    assert ray_local.is_initialized()  # the job used the test's Ray and left it running
    assert summary["model_uri"] == "models:/unet/1" and summary["alias_set"] is True
    assert summary["epochs"] == epochs and summary["images_per_second"] > 0
    assert 0.0 < summary["val_miou"] <= 1.0

    client = MlflowClient()
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == str(epochs) and run.data.params["in_channels"] == "3"
    history = sorted(client.get_metric_history(run.info.run_id, "train_loss"), key=lambda m: m.step)
    losses = [m.value for m in history]
    assert len(losses) == epochs and losses[-1] < losses[0]
    class_map = json.loads((Path(synthetic_root) / "classes.json").read_text())
    names = [c["name"] for c in class_map["classes"]]
    per_class = [f"val_iou/{n}" for n in names] + [f"val_dice/{n}" for n in names]
    for key in ("val_loss", "val_miou", "val_pixel_accuracy", "images_per_second", *per_class):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2, 3], key

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "split.json", "figures"} <= artifacts
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert figures == {"figures/loss_curve.png", "figures/validation_panel.png"}
    split_file = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="split.json"
    )
    split = json.loads(Path(split_file).read_text())
    assert len(split["train"]) + len(split["val"]) == 16
    assert not set(split["train"]) & set(split["val"])

    version = client.get_model_version_by_alias("unet", "champion")
    assert str(version.version) == "1" and version.run_id == summary["run_id"]
    assert {"run_id", "data_root", "val_miou", "code_version"} <= set(version.tags)
    assert version.tags["data_root"] == str(Path(synthetic_root).resolve())

    folder = Path(mlflow.artifacts.download_artifacts("models:/unet/1"))
    (checkpoint,) = folder.glob("**/unet.pt")
    assert checkpoint.parent.name == "artifacts"
    loaded = load_checkpoint(checkpoint)
    image = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    prediction = predict(loaded.model, image, preprocess=loaded.preprocess)
    assert prediction.mask.shape == (40, 56) and prediction.mask.max() < 3
    assert mlflow.pyfunc.load_model("models:/unet@champion").predict(image).shape == (40, 56)

    # the alias gate, against the version now holding @champion
    held = float(version.tags["val_miou"])
    assert (
        decide_alias(client, "unet", "champion", val_miou=held - 0.1, min_miou=0, force=False)[0]
        is False
    )
    assert (
        decide_alias(client, "unet", "champion", val_miou=held - 0.1, min_miou=0, force=True)[0]
        is True
    )
    ok, why = decide_alias(client, "unet", "champion", val_miou=0.5, min_miou=0.9, force=True)
    assert not ok and "--min-miou" in why


def test_bad_data_exits_2_before_training(ray_local, mlflow_uri, synthetic_root, in_tmp, capsys):
    import shutil

    data = in_tmp / "data"
    shutil.copytree(synthetic_root, data)
    (data / "masks" / "synth_0003.png").unlink()
    assert main(["--data", str(data), "--storage-path", str(in_tmp / "runs")]) == 2
    err = capsys.readouterr().err
    assert "images/synth_0003.png" in err and "Traceback" not in err


def test_ray_data_pass_checks_what_the_driver_sample_left(ray_local, synthetic_root, tmp_path):
    import shutil

    from PIL import Image

    from jobs.training.data_checks import DataValidationError, check_with_ray, plan_data

    data = tmp_path / "data"
    shutil.copytree(synthetic_root, data)
    plan, unchecked = plan_data(str(data), val_fraction=0.2, seed=0, check_limit=4)
    assert sum(len(pairs) for _, pairs in unchecked) == 12
    check_with_ray(plan, unchecked)  # clean data passes
    bad = unchecked[0][1][0]  # a pair the driver did not read
    mask = np.asarray(Image.open(data / bad.mask)).copy()
    mask[0, 0] = 7
    Image.fromarray(mask).save(data / bad.mask)
    with pytest.raises(DataValidationError) as err:
        check_with_ray(plan, unchecked)
    assert bad.mask in str(err.value) and "[7]" in str(err.value)
