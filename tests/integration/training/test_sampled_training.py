"""jobs/train.py with --samples-per-epoch (an epoch = that many random crops, drawn from the
whole training set on every worker) and the border weight map in the loss, on 2 workers."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from jobs.train import main
from jobs.training import trainer
from tests.integration.training.test_train import TINY, run_job

pytestmark = pytest.mark.integration


def test_sampled_epochs_with_border_weights(
    ray_local, mlflow_uri, synthetic_root, tmp_path, capsys
):
    code, summary = run_job(
        ["--data", str(synthetic_root), "--epochs", "2", "--num-workers", "2",
         "--samples-per-epoch", "11", "--crop-size", "32", "--border-weight", "10",
         "--elastic", "0.5", "--rotate-degrees", "20", "--storage-path", str(tmp_path / "runs"),
         "--run-name", "sampled", *TINY],
        capsys,
    )  # fmt: skip
    assert code == 0 and summary["epochs"] == 2
    client = MlflowClient()
    history = client.get_metric_history(summary["run_id"], "train_images")
    # 11 crops per epoch, rounded down to a multiple of the 2 workers
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == [10, 10]
    params = client.get_run(summary["run_id"]).data.params
    assert params["samples_per_epoch"] == "11" and params["border_weight"] == "10.0"
    assert 0.0 <= summary["val_miou"] <= 1.0


def test_a_training_set_too_large_to_hold_on_every_worker_is_refused(
    ray_local, mlflow_uri, synthetic_root, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(trainer, "SAMPLED_SET_LIMIT_GIB", 1e-6)
    code = main(
        ["--data", str(synthetic_root), "--samples-per-epoch", "8", "--storage-path",
         str(tmp_path / "runs"), *TINY]
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "--samples-per-epoch 8 holds the whole training set on every worker" in err
