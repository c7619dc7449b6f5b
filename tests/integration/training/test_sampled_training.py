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
    argv = ["--data", str(synthetic_root), "--epochs", "2", "--num-workers", "2",
            "--samples-per-epoch", "11", "--crop-size", "32", "--elastic", "0.5",
            "--rotate-degrees", "20", "--storage-path", str(tmp_path / "runs"), *TINY]  # fmt: skip
    code, summary = run_job([*argv, "--border-weight", "10", "--run-name", "sampled"], capsys)
    assert code == 0 and summary["epochs"] == 2
    client = MlflowClient()

    def logged(run: dict, key: str) -> list[float]:
        history = client.get_metric_history(run["run_id"], key)
        return [m.value for m in sorted(history, key=lambda m: m.step)]

    # 11 crops per epoch, rounded down to a multiple of the 2 workers
    assert logged(summary, "train_images") == [10, 10]
    params = client.get_run(summary["run_id"]).data.params
    assert params["samples_per_epoch"] == "11" and params["border_weight"] == "10.0"
    assert 0.0 <= summary["val_mean_iou"] <= 1.0

    # The weights reach the workers' loss: the same run without them (the same seed, so the
    # same crops, augmentations and initial model) has another training loss from its first
    # epoch on. (Dropping the weights anywhere between the flag and the loss makes the two
    # runs' losses equal: the runs are deterministic.)
    code, plain = run_job([*argv, "--run-name", "sampled-plain"], capsys)
    assert code == 0
    assert client.get_run(plain["run_id"]).data.params["border_weight"] == "0.0"
    weighted, unweighted = logged(summary, "train_loss"), logged(plain, "train_loss")
    assert len(weighted) == len(unweighted) == 2
    assert abs(weighted[0] - unweighted[0]) > 1e-4 * abs(unweighted[0]), (weighted, unweighted)


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
