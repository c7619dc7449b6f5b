"""End to end: the commands a user types, against real servers on 127.0.0.1.

`ray job submit --working-dir . --runtime-env <cluster/runtime_env.yaml + settings>` runs
jobs/train.py and jobs/segment.py on a `ray start --head` cluster with token authentication;
the model lands in an `mlflow server` (artifacts proxied to S3, basic auth on: the jobs log
in with MLFLOW_TRACKING_USERNAME/PASSWORD) and the masks in an S3 bucket (moto). Fixtures: tests/e2e/conftest.py.
"""

from __future__ import annotations

import io
import textwrap
import uuid

import pyarrow.parquet as pq
import pytest

from tests.e2e.conftest import VENV_BIN, JobRun, RayHead, S3Store, child_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

MODEL_NAME = "unet-e2e"
ALIAS = "champion"


def test_submit_without_the_token_is_refused(ray_head: RayHead, e2e_tmp, job_runtime_env):
    marker = f"refused-{uuid.uuid4().hex[:8]}"
    entrypoint = ["python", "-c", f"print('{marker}')"]
    stranger_home = e2e_tmp / "stranger"
    stranger_home.mkdir()

    # A user who never configured auth: no RAY_AUTH_MODE, no token anywhere.
    no_token = ray_head.submit(
        entrypoint, runtime_env=job_runtime_env, env=child_env(HOME=str(stranger_home))
    )
    assert no_token.returncode != 0, no_token.describe()
    assert "Unauthorized" in no_token.output or "401" in no_token.output, no_token.describe()
    assert "token" in no_token.output.lower(), no_token.describe()

    # Token auth on, but someone else's token.
    wrong_token = ray_head.submit(
        entrypoint,
        runtime_env=job_runtime_env,
        env=child_env(HOME=str(stranger_home), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 64),
    )
    assert wrong_token.returncode != 0, wrong_token.describe()
    assert "Invalid authentication token" in wrong_token.output, wrong_token.describe()

    assert not [job for job in ray_head.jobs() if marker in job.get("entrypoint", "")]


def test_runtime_env_ships_code_and_settings(ray_head: RayHead, job_runtime_env, mlflow_server):
    """The working dir upload has the code and not the venv; `python` is the project's; the
    runtime_env's MLflow settings reach the job (and its basic-auth credentials are
    accepted)."""
    probe = textwrap.dedent(
        """
        import json, os, sys
        from pathlib import Path
        import mlflow
        client = mlflow.MlflowClient()
        client.search_experiments()  # with basic auth: needs the runtime_env's credentials
        print(json.dumps({
            "python": sys.executable,
            "cwd_entries": sorted(p.name for p in Path.cwd().iterdir()),
            "tracking_uri": mlflow.get_tracking_uri(),
        }))
        """
    )
    run = ray_head.submit(["python", "-c", probe], runtime_env=job_runtime_env, timeout=180)
    assert run.returncode == 0, run.describe()
    result = run.final_json
    assert result["python"].startswith(f"{VENV_BIN}/python"), result
    assert {"jobs", "unet_core", "pyproject.toml"} <= set(result["cwd_entries"]), result
    assert not {".venv", ".git", "mlflow.db", "mlruns"} & set(result["cwd_entries"]), result
    assert result["tracking_uri"] == mlflow_server.url


@pytest.fixture(scope="module")
def train_run(ray_head: RayHead, job_runtime_env, e2e_s3: S3Store, e2e_tmp) -> JobRun:
    """jobs/train.py on the cluster: 2 epochs of a tiny UNet, 2 workers of half a CPU each."""
    return ray_head.submit(
        [
            "python", "jobs/train.py",
            "--data", e2e_s3.labelled_uri,
            "--epochs", "2",
            "--batch-size", "4",
            "--crop-size", "0",
            "--base-width", "8",
            "--depth", "2",
            "--norm", "group",
            "--no-augment",
            "--num-workers", "2",
            "--cpus-per-worker", "0.5",
            "--no-gpu",
            "--experiment", "e2e",
            "--register-as", MODEL_NAME,
            "--alias", ALIAS,
            "--run-name", f"e2e-{uuid.uuid4().hex[:8]}",
            "--storage-path", str(e2e_tmp / "ray-runs"),
        ],
        runtime_env=job_runtime_env,
        timeout=420,
    )  # fmt: skip


def test_train_job_registers_the_model_with_its_alias(
    train_run: JobRun, mlflow_client, mlflow_server, e2e_s3: S3Store
):
    assert train_run.returncode == 0, train_run.describe()
    summary = train_run.final_json
    assert summary["model_name"] == MODEL_NAME
    assert summary["alias_set"] is True, summary

    # The registry on the server says the same.
    version = mlflow_client.get_model_version_by_alias(MODEL_NAME, ALIAS)
    assert str(version.version) == str(summary["model_version"])
    assert version.run_id == summary["run_id"]
    assert {"run_id", "val_miou"} <= set(version.tags), version.tags
    run = mlflow_client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert "val_miou" in run.data.metrics

    # Its artifacts went through the server's proxy into the bucket.
    keys = e2e_s3.keys(mlflow_server.artifacts_prefix)
    assert any(k.endswith("/unet.pt") for k in keys), keys
    assert any(summary["run_id"] in k for k in keys), keys


def test_segment_job_writes_one_mask_per_image_and_a_manifest(
    train_run: JobRun, ray_head: RayHead, job_runtime_env, e2e_s3: S3Store
):
    assert train_run.returncode == 0, "the training job failed: see test_train_job_registers_..."
    trained_version = str(train_run.final_json["model_version"])
    output_prefix = "masks/unlabelled"
    run = ray_head.submit(
        [
            "python", "jobs/segment.py",
            "--input", e2e_s3.unlabelled_uri,
            "--output", f"s3://{e2e_s3.bucket}/{output_prefix}",
            "--model", f"models:/{MODEL_NAME}@{ALIAS}",
            "--batch-size", "4",
            "--num-cpus-per-actor", "1",
            "--torch-threads", "1",
        ],
        runtime_env=job_runtime_env,
        timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.describe()
    summary = run.final_json
    n = len(e2e_s3.unlabelled_images)
    assert (summary["total"], summary["ok"], summary["failed"]) == (n, n, 0), summary
    assert str(summary["model_version"]) == trained_version, summary
    assert summary["model_name"] == MODEL_NAME

    # One mask per image, under the image's relative path.
    keys = set(e2e_s3.keys(f"{output_prefix}/"))
    expected = {f"{output_prefix}/masks/{rel}" for rel in e2e_s3.unlabelled_images}
    assert expected <= keys, sorted(keys)
    assert len([k for k in keys if k.startswith(f"{output_prefix}/masks/")]) == n

    # The manifest: a row per image, each naming the model version that made it.
    manifest_key = f"{output_prefix}/manifest.parquet"
    assert manifest_key in keys, sorted(keys)
    table = pq.read_table(io.BytesIO(e2e_s3.read(manifest_key)))
    rows = table.to_pylist()
    assert sorted(r["relative_path"] for r in rows) == sorted(e2e_s3.unlabelled_images)
    assert {r["status"] for r in rows} == {"ok"}
    assert {str(r["model_version"]) for r in rows} == {trained_version}
