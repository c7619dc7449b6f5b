"""--class-balance: class weights counted on the training masks by Ray Data tasks, the same as
the library computes them, given to every worker's loss and recorded on the run. A local Ray,
a sqlite MLflow, the synthetic set; a tiny model, one epoch."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from jobs.training import class_balance
from jobs.training.data_checks import gather_training_data
from tests.integration.training.test_train import TINY, run_job
from unet_core.data import read_mask
from unet_core.losses import class_pixel_counts, median_frequency_weights

pytestmark = pytest.mark.integration


def expected_weights(root, data, pairs, power):
    counts = [
        class_pixel_counts(read_mask(root / p.mask, data.class_map), data.class_map.num_classes)
        for p in pairs
    ]
    return median_frequency_weights(counts, power=power)


def test_weights_are_counted_on_the_training_masks(ray_local, synthetic_root, tmp_path, caplog):
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    data, _ = gather_training_data(str(root), val_fraction=0.25, seed=0)
    assert data.val  # the validation masks are not counted
    weights = class_balance.class_weights(data, 0.5, seed=0)
    assert weights == pytest.approx(expected_weights(root, data, data.train, 0.5), rel=1e-12)
    assert len(set(weights)) > 1
    assert class_balance.class_weights(data, 0.0, seed=0) is None

    # a mask that no longer decodes is left out of the count, named in the log
    broken = data.train[0]
    (root / broken.mask).write_bytes(b"not a png")
    with caplog.at_level("INFO", logger="jobs.training.class_balance"):
        weights = class_balance.class_weights(data, 1.0, seed=0)
    assert weights == pytest.approx(expected_weights(root, data, data.train[1:], 1.0), rel=1e-12)
    assert f"counted on {len(data.train) - 1} training masks" in caplog.text


def test_a_large_set_is_counted_on_a_seeded_sample(ray_local, synthetic_root, monkeypatch):
    data, _ = gather_training_data(str(synthetic_root), val_fraction=0.2, seed=0)
    assert len(data.train) > 5
    monkeypatch.setattr(class_balance, "COUNT_LIMIT", 5)
    a = class_balance.class_weights(data, 1.0, seed=3)
    assert a == class_balance.class_weights(data, 1.0, seed=3)
    import random

    sample = random.Random(3).sample(list(data.train), 5)
    assert a == pytest.approx(expected_weights(synthetic_root, data, sample, 1.0), rel=1e-12)
    empty = dataclasses.replace(data, train=[])
    with pytest.raises(ValueError, match="--class-balance 0"):
        class_balance.class_weights(empty, 1.0, seed=0)


def test_training_with_class_balance_records_the_weights(
    ray_local, mlflow_uri, synthetic_root, tmp_path, monkeypatch, capsys
):
    import mlflow
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    code, summary = run_job(
        ["--data", str(synthetic_root), "--epochs", "1", "--num-workers", "2",
         "--class-balance", "1", "--run-name", "it-balance",
         "--storage-path", str(tmp_path / "runs"), *TINY],
        capsys,
    )  # fmt: skip
    assert code == 0
    run = MlflowClient().get_run(summary["run_id"])

    def artifact(name):
        path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=name)
        return json.loads(Path(path).read_text())

    data, _ = gather_training_data(str(synthetic_root), val_fraction=0.2, seed=0)
    assert [p.key for p in data.train] == artifact("split.json")["train"]
    expected = expected_weights(synthetic_root, data, data.train, 1.0)
    assert json.loads(run.data.params["class_weights"]) == [round(w, 4) for w in expected]
    assert artifact("config.json")["class_weights"] == pytest.approx(expected)
