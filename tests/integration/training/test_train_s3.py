"""The same training job with data and checkpoints on S3 (a local moto server on 127.0.0.1)."""

from __future__ import annotations

import json

import pytest

from jobs.train import main
from tests.conftest import upload_tree

pytestmark = pytest.mark.integration


def test_train_from_s3_data_to_s3_storage(
    ray_local, mlflow_uri, s3_endpoint, s3_bucket, synthetic_root, tmp_path, monkeypatch, capsys
):
    import boto3
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    data = upload_tree(synthetic_root, s3_bucket, "sets/synthetic", s3_endpoint)
    code = main(
        ["--data", data, "--storage-path", f"s3://{s3_bucket}/runs", "--run-name", "it-s3",
         "--s3-endpoint-url", s3_endpoint, "--epochs", "2", "--num-workers", "2",
         "--base-width", "8", "--depth", "2", "--norm", "group", "--batch-size", "4"]
    )  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["data_root"] == data and summary["epochs"] == 2

    keys = [
        o["Key"]
        for o in boto3.client("s3", endpoint_url=s3_endpoint)
        .list_objects_v2(Bucket=s3_bucket, Prefix="runs/it-s3/")
        .get("Contents", [])
    ]
    assert any(k.endswith("/unet.pt") for k in keys)  # checkpoints written to the bucket
    assert any(k.endswith("/train_state.pt") for k in keys)
    assert "runs/it-s3/checkpoint_manager_snapshot.json" in keys

    client = MlflowClient()
    version = client.get_model_version(summary["model_name"], summary["model_version"])
    assert version.tags["data_root"] == data
    assert [m.step for m in client.get_metric_history(summary["run_id"], "val_miou")] == [1, 2]
