"""A pair that passes the driver's checks but fails to decode in training is counted, not
silently dropped: the default run fails naming it; --max-bad-pairs 1 trains without it and
reports it. Local Ray (2 CPU workers), a sqlite MLflow, a small synthetic set.

The corruption is one an honest run meets: an image truncated after its header. The driver
reads image headers only (`jobs.training.data_checks`), so only the Ray Data decode fails.
"""

from __future__ import annotations

import json

import pytest

from jobs.train import main
from jobs.training.data_checks import gather_training_data
from jobs.training.worker_loop import RESUMED_TAG
from unet_core.synthetic import make_synthetic_dataset

pytestmark = pytest.mark.integration

TINY = ["--base-width", "8", "--depth", "2", "--norm", "group", "--batch-size", "2"]


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory):
    """(root, the truncated image's path, training pairs, validation pairs)."""
    root = tmp_path_factory.mktemp("bad-pairs")
    make_synthetic_dataset(root, num_images=10, size=32, seed=0)
    data, _ = gather_training_data(str(root), val_fraction=0.2, seed=0)  # the split the job makes
    image = root / data.train[0].image
    image.write_bytes(image.read_bytes()[:200])  # header intact, pixel data cut
    gather_training_data(str(root), val_fraction=0.2, seed=0)  # the driver's checks still pass
    return root, str(image), len(data.train), len(data.val)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def metric(client, run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_default_fails_after_the_first_epoch_naming_the_file(
    ray_local, mlflow_uri, bad_data, in_tmp, capsys
):
    from mlflow.tracking import MlflowClient

    root, image, _, _ = bad_data
    code = main(
        ["--data", str(root), "--epochs", "3", "--num-workers", "2", "--run-name", "bad-default",
         "--storage-path", str(in_tmp / "runs"), *TINY]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 1  # the run failed its own criterion, --max-failed-fraction
    assert json.loads(out.splitlines()[-1])["kind"] == "criterion"
    assert "1 image/mask pair(s) could not be read or decoded during training" in err
    assert (
        f"{image}: cannot decode image" in err and "the 0 that --max-failed-fraction allows" in err
    )
    assert "Repair or remove these files" in err
    driver = [line for line in err.splitlines() if not line.startswith("\x1b[36m(")]  # not Ray's
    assert not any("Traceback" in line for line in driver)

    client = MlflowClient()
    (run,) = client.search_runs(
        [client.get_experiment_by_name("unet").experiment_id],
        filter_string="tags.`unet_ray.run_name` = 'bad-default'",
    )
    assert run.info.status == "FAILED"
    # stopped at the end of epoch 1 on every rank, and not retried (no resumed attempt)
    assert metric(client, run.info.run_id, "epoch") == [1.0]
    assert metric(client, run.info.run_id, "bad_pairs") == [1.0]
    assert RESUMED_TAG not in run.data.tags


def test_max_bad_pairs_trains_without_the_pair_and_reports_it(
    ray_local, mlflow_uri, bad_data, in_tmp, capsys
):
    import mlflow
    from mlflow.tracking import MlflowClient

    root, image, train, val = bad_data
    code = main(
        ["--data", str(root), "--epochs", "1", "--num-workers", "2", "--run-name", "bad-allowed",
         "--max-bad-pairs", "1", "--storage-path", str(in_tmp / "runs"), *TINY]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert (summary["failed"], summary["failed_fraction"]) == (1, 1 / (train + val))
    (example,) = summary["failed_inputs"]
    assert example["error"].startswith(f"{image}: cannot decode image")
    assert "truncated" in example["error"]

    client = MlflowClient()
    run_id = summary["run_id"]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert metric(client, run_id, "bad_pairs") == [1.0]
    # trained on the other pairs (equal shards of 2 workers), validated on every one
    assert metric(client, run_id, "train_images") == [(train - 1) // 2 * 2]
    assert metric(client, run_id, "val_images") == [val]
    listed = mlflow.artifacts.load_dict(f"runs:/{run_id}/bad_pairs.json")
    assert listed == {example["input"]: example["error"]} and example["input"] == image
