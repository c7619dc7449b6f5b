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


def val_miou_of(loaded, root: Path, keys: list[str]) -> tuple[float, float]:
    """(mean IoU of a loaded checkpoint over the validation images, how far the workers' value
    may be from it). As the workers compute it: fp32 forward passes, argmax, one confusion
    matrix over all the images. Not to the bit: their batched passes round differently from
    single images (logits differ by ~1e-4 for these models), which can flip the argmax of a
    pixel whose two best logits are that close; each such near tie (within 5e-4) moves the
    mean IoU by at most 2 / (classes * smallest union)."""
    import torch

    from unet_core.data import read_image, read_mask
    from unet_core.metrics import ConfusionMatrix

    k = loaded.class_map.num_classes
    confusion, near_ties = ConfusionMatrix(k), 0
    model = loaded.model.eval()
    with torch.inference_mode():
        for key in keys:
            image = read_image(root / "images" / f"{key}.png", channels=loaded.preprocess.channels)
            logits = model(torch.from_numpy(loaded.preprocess.normalize(image))[None])[0]
            top2 = logits.topk(2, dim=0).values
            near_ties += int((top2[0] - top2[1] < 5e-4).sum())
            truth = read_mask(root / "masks" / f"{key}.png", loaded.class_map)
            confusion.update(logits.argmax(dim=0).numpy(), truth)
    m, tp = confusion.matrix, np.diag(confusion.matrix)
    unions = (m.sum(0) + m.sum(1) - tp)[m.sum(0) + m.sum(1) > 0]
    assert near_ties < 50 and unions.min() > 2 * near_ties, (near_ties, unions)
    return confusion.mean_iou(), 1e-9 + near_ties * 2 / (k * (unions.min() - near_ties))


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow keeps artifacts under ./mlruns
    return tmp_path


def test_train_logs_registers_and_loads(ray_local, mlflow_uri, synthetic_root, in_tmp, capsys):
    import mlflow
    from mlflow.tracking import MlflowClient

    from unet_core.checkpoint import load_checkpoint
    from unet_core.data import read_image
    from unet_core.predict import predict, prepare_for_inference

    epochs = 3
    code, summary = run_job(
        ["--data", str(synthetic_root), "--epochs", str(epochs), "--lr", "1e-2",
         "--num-workers", "2", "--run-name", "it-train", "--storage-path", str(in_tmp / "runs"),
         # fp32: val_miou_of recomputes the workers' validation in fp32 (bf16 autocast, the
         # default on CPUs with native bf16, moves near ties by far more than its tolerance)
         "--amp", "off", *TINY],
        capsys,
    )  # fmt: skip
    assert code == 0
    assert ray_local.is_initialized()  # the job used the test's Ray and left it running
    assert summary["model_uri"] == "models:/unet/1" and summary["alias_set"] is True
    assert summary["epochs"] == epochs and summary["num_workers"] == 2
    assert 0.0 < summary["val_mean_iou"] <= 1.0

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

    # Throughput and counts, exact: every epoch trained on the equal shards of 2 workers (the
    # remainder dropped) and validated every validation image once; images_per_second of an
    # epoch is its images over the slowest rank's seconds, and the summary's is the mean over
    # the epochs after the first (warm-up), as logged.
    def logged(key: str) -> list[float]:
        return [m.value for m in sorted(client.get_metric_history(run.info.run_id, key),
                                        key=lambda m: m.step)]  # fmt: skip

    train_images, train_seconds = logged("train_images"), logged("train_seconds")
    assert train_images == [len(split["train"]) // 2 * 2] * epochs
    assert logged("val_images") == [len(split["val"])] * epochs
    assert all(s > 0 for s in train_seconds)
    rates = logged("images_per_second")
    assert rates == pytest.approx(
        [i / s for i, s in zip(train_images, train_seconds, strict=True)], rel=1e-9
    )
    assert summary["images_per_second"] == round(sum(rates[1:]) / (epochs - 1), 2)
    assert sum(train_seconds) < summary["seconds"]
    # The best epoch (val_miou, the later one on ties) is the one reported and registered.
    val_mious = logged("val_miou")
    best = max(range(1, epochs + 1), key=lambda e: (val_mious[e - 1], e))
    assert (summary["best_epoch"], summary["val_mean_iou"]) == (best, val_mious[best - 1])

    version = client.get_model_version_by_alias("unet", "champion")
    assert str(version.version) == "1" and version.run_id == summary["run_id"]
    assert {"run_id", "data_root", "val_miou", "code_version"} <= set(version.tags)
    assert version.tags["data_root"] == str(Path(synthetic_root).resolve())

    folder = Path(mlflow.artifacts.download_artifacts("models:/unet/1"))
    (checkpoint,) = folder.glob("**/unet.pt")
    assert checkpoint.parent.name == "artifacts"
    loaded = load_checkpoint(checkpoint)
    assert (loaded.extra["epoch"], loaded.extra["val_miou"]) == (best, summary["val_mean_iou"])
    # the very file Ray Train kept for the best epoch (--keep-checkpoints 2 keeps the best)
    kept = {
        load_checkpoint(f).extra["epoch"]: f
        for f in Path(summary["checkpoints"]).glob("checkpoint_*/unet.pt")
    }
    assert best in kept and len(kept) == 2, kept
    assert checkpoint.read_bytes() == kept[best].read_bytes()
    assert loaded.class_map.names == names and loaded.class_map.values == [
        c["value"] for c in class_map["classes"]
    ]
    model = prepare_for_inference(loaded.model, "cpu")
    # The registered pyfunc model predicts exactly what unet_core.predict.predict gives with the
    # checkpoint loaded directly: on an image of another size and on the validation images.
    pyfunc = mlflow.pyfunc.load_model("models:/unet@champion")
    noise = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    val_images = {
        key: read_image(Path(synthetic_root) / "images" / f"{key}.png", channels=3)
        for key in split["val"]
    }
    for name, image in {"noise": noise, **val_images}.items():
        direct = predict(model, image, preprocess=loaded.preprocess).mask
        assert direct.shape == image.shape[:2] and direct.dtype == np.uint8
        np.testing.assert_array_equal(pyfunc.predict(image), direct, err_msg=name)
    # ...and the registered weights score on the validation split what the run reported.
    miou, tolerance = val_miou_of(loaded, Path(synthetic_root), split["val"])
    assert miou == pytest.approx(summary["val_mean_iou"], abs=tolerance), tolerance

    # the alias gate had no champion to compare with (its rules: tests/unit/training/
    # test_alias_gate.py; a comparison on the same pairs: test_champion_gate.py)
    assert summary["alias_decision"]["champion_version"] is None
    assert version.tags["champion_version"] == "none"
    reason = "no version held @champion yet"
    assert version.tags["alias_decision"] == summary["alias_reason"] == reason


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

    from jobs.training.data_checks import DataValidationError, check_with_ray, gather_training_data

    data = tmp_path / "data"
    shutil.copytree(synthetic_root, data)
    gathered, unchecked = gather_training_data(str(data), val_fraction=0.2, seed=0, check_limit=4)
    assert sum(len(pairs) for _, pairs in unchecked) == 12
    check_with_ray(gathered, unchecked)  # clean data passes
    bad = unchecked[0][1][0]  # a pair the driver did not read
    mask = np.asarray(Image.open(data / bad.mask)).copy()
    mask[0, 0] = 7
    Image.fromarray(mask).save(data / bad.mask)
    with pytest.raises(DataValidationError) as err:
        check_with_ray(gathered, unchecked)
    assert bad.mask in str(err.value) and "[7]" in str(err.value)


def test_dry_run_reports_the_resolved_system_metrics(ray_local, synthetic_root, capsys):
    code, plan = run_job(["--dry-run", "--data", str(synthetic_root)], capsys)
    assert code == 0 and plan["dry_run"] and plan["system_metrics"] is False  # a local Ray
    code, plan = run_job(["--dry-run", "--data", str(synthetic_root), "--system-metrics"], capsys)
    assert code == 0 and plan["system_metrics"] is True
