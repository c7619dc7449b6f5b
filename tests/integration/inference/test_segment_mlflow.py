"""jobs/segment.py records its run in MLflow (a real sqlite store, a real local Ray): params,
the model version, counts and throughput, the manifest's URI, the QC report as an artifact, and
the link from the model version to the runs that used it. Off with --no-log-to-mlflow; a dry
run records nothing; a job that fails its criterion or raises ends its run FAILED; an MLflow
failure costs no mask."""

from __future__ import annotations

import logging
import re

import pytest
from PIL import Image

from jobs import segment
from jobs.common.model_lineage import runs_using
from jobs.inference.config import SegmentConfig
from jobs.segmenting import job as segment_job
from jobs.segmenting.manifest import read_manifest
from tests.conftest import upload_tree
from tests.integration.inference.helpers import run_main

pytestmark = pytest.mark.integration

EXPERIMENT = "segment-mlflow-tests"


@pytest.fixture
def client(tmp_path, mlflow_uri):
    """The store's client, with the segment runs' experiment keeping artifacts in tmp_path."""
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri, mlflow_uri)
    client.create_experiment(EXPERIMENT, artifact_location=(tmp_path / "artifacts").as_uri())
    return client


def _runs(client) -> list:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs([experiment.experiment_id])


def _images(tmp_path, synthetic_root, n: int, *, bad: int = 0):
    folder = tmp_path / "images"
    folder.mkdir()
    for p in sorted((synthetic_root / "images").glob("*.png"))[:n]:
        Image.open(p).save(folder / p.name)
    for i in range(bad):
        (folder / f"broken_{i}.png").write_bytes(b"not a png\n")
    return folder


def test_segment_records_its_run_and_links_the_model_version(
    tmp_path, ray_local, registered, synthetic_root, client, capsys
):
    _, version = registered
    images = _images(tmp_path, synthetic_root, 6)
    out = tmp_path / "out"
    argv = ["--input", images, "--output", out, "--model", "models:/unet@champion"]
    argv += ["--experiment", EXPERIMENT, "--report", "--device", "cpu", "--tile-size", "256"]
    code, summary = run_main(segment.main, argv, capsys)
    assert code == 0 and summary["ok"] == 6, summary

    (run,) = _runs(client)
    assert summary["mlflow_run_id"] == run.info.run_id
    assert run.info.status == "FINISHED"
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    # Params: the settings as given and as this run resolved them, and the model.
    assert params["input"] == str(images) and params["output"] == str(out)
    assert params["model"] == "models:/unet@champion"
    assert params["model_uri"] == f"models:/unet/{version}"
    assert (params["device"], params["device_requested"]) == ("cpu", "cpu")
    assert (params["tile_size"], params["tta"], params["mask_format"]) == ("256", "none", "indices")
    for key in ("num_workers", "batch_size", "actors_min", "actors_max", "manifest_format"):
        assert key in params, key
    assert params["checkpoint_sha256"] == summary["checkpoint_sha256"]
    assert "tracking_uri" not in params and "log_level" not in params
    # Tags: the model version and the outputs.
    assert tags["job"] == "segment"
    assert (tags["model_name"], tags["model_version"]) == ("unet", version)
    assert tags["model_id"] == summary["model_id"] and tags["model_alias"] == "champion"
    assert tags["model_run_id"] == summary["model_run_id"]
    assert tags["checkpoint_sha256"] == summary["checkpoint_sha256"]
    assert tags["manifest"] == summary["manifest"] and tags["output"] == str(out)
    assert tags["report"] == str(out / "report.html")
    assert len(read_manifest(tags["manifest"])) == 6
    # Metrics: the summary's figures.
    for key in ("total", "ok", "failed", "skipped", "failed_fraction", "seconds"):
        assert metrics[key] == pytest.approx(summary[key]), key
    assert metrics["images_per_second"] == pytest.approx(summary["images_per_second"])
    assert metrics["images_per_second"] > 0 and metrics["ok"] == 6

    # Artifacts: the summary, and the QC page with every image it shows.
    local = client.download_artifacts(run.info.run_id, "", str(tmp_path / "dl"))
    page = (tmp_path / "dl" / "qc_report" / "report.html").read_text()
    assert page == (out / "report.html").read_text()
    shown = set(re.findall(r'src="(report/[^"]+)"', page))
    assert shown, "the page shows no image"
    for asset in shown:
        assert (tmp_path / "dl" / "qc_report" / asset).read_bytes() == (out / asset).read_bytes()
    assert (tmp_path / "dl" / "segment.json").is_file(), local

    # Lineage: the logged model is the run's input, and from the version the run is found.
    inputs = client.get_run(run.info.run_id).inputs  # (search_runs leaves model inputs out)
    assert [m.model_id for m in inputs.model_inputs] == [summary["model_id"]]
    assert [r.info.run_id for r in runs_using(client, "unet", version, job="segment")] == [
        run.info.run_id
    ]
    mv = client.get_model_version("unet", version)
    assert mv.tags["segment_run_id"] == run.info.run_id
    assert mv.tags["segment_output"] == str(out)
    assert runs_using(client, "unet", "1", job="segment") == []  # the other version: none

    # --no-log-to-mlflow records nothing; nor does a dry run.
    code, again = run_main(segment.main, [*argv, "--no-log-to-mlflow"], capsys)
    assert code == 0 and again["skipped"] == 6 and "mlflow_run_id" not in again, again
    code, dry = run_main(segment.main, [*argv, "--dry-run", "--overwrite"], capsys)
    assert code == 0 and dry["to_process"] == 6, dry
    assert [r.info.run_id for r in _runs(client)] == [run.info.run_id]


def test_a_failed_job_ends_its_run_failed(
    tmp_path, ray_local, registered, synthetic_root, client, capsys, monkeypatch
):
    _, version = registered
    images = _images(tmp_path, synthetic_root, 3, bad=1)
    argv = ["--input", images, "--model", f"models:/unet/{version}", "--experiment", EXPERIMENT]
    argv += ["--no-report", "--device", "cpu"]

    # Exit 1: one input of four failed, above --max-failed-fraction 0.
    code, summary = run_main(segment.main, [*argv, "--output", tmp_path / "a"], capsys)
    assert code == 1 and summary["failed"] == 1, summary
    (run,) = _runs(client)
    assert run.info.status == "FAILED"
    assert (run.data.metrics["failed"], run.data.metrics["ok"]) == (1, 3)
    assert run.data.tags["manifest"] == summary["manifest"]

    # An exception after the work started ends the run FAILED too.
    def broken(*args, **kwargs):
        raise RuntimeError("the manifest store went away")

    monkeypatch.setattr(segment_job.manifest, "write_final", broken)
    try:  # an error line and an exit code, or (an older main) the exception itself
        code, error = run_main(segment.main, [*argv, "--output", tmp_path / "b"], capsys)
        assert code not in (0, 1) and "went away" in error["error"], error
    except RuntimeError as exc:
        assert "went away" in str(exc)
    latest = max(_runs(client), key=lambda r: r.info.start_time)
    assert latest.info.run_id != run.info.run_id
    assert latest.info.status == "FAILED"


def test_an_mlflow_failure_costs_no_mask(
    tmp_path, ray_local, registered, synthetic_root, client, capsys, monkeypatch, caplog
):
    from mlflow import MlflowClient

    _, version = registered
    images = _images(tmp_path, synthetic_root, 3)
    out = tmp_path / "out"

    def refused(*args, **kwargs):
        raise RuntimeError("the tracking server said 503")

    monkeypatch.setattr(MlflowClient, "log_batch", refused)
    argv = ["--input", images, "--output", out, "--model", f"models:/unet/{version}"]
    argv += ["--experiment", EXPERIMENT, "--no-report", "--device", "cpu"]
    with caplog.at_level(logging.WARNING, logger="jobs.segmenting.tracking"):
        code, summary = run_main(segment.main, argv, capsys)
    assert code == 0 and summary["ok"] == 3, summary
    assert sorted(p.name for p in (out / "masks").iterdir()) == sorted(
        p.name for p in images.iterdir()
    )
    assert "the tracking server said 503" in caplog.text
    (run,) = _runs(client)
    assert run.info.status == "FINISHED" and run.data.metrics == {}  # the rest was logged


def test_the_default_is_the_vocabulary_rule(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def logs(**fields) -> bool:
        return SegmentConfig(input="i", output="o", **fields).mlflow_logging

    assert logs()  # models:/unet@champion
    assert not logs(model="ckpt/unet.pt")
    assert logs(model="ckpt/unet.pt", tracking_uri="http://mlflow:5000")
    assert not logs(log_to_mlflow=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///x.db")
    assert logs(model="ckpt/unet.pt")


def test_an_s3_output_records_its_manifest_and_report(
    tmp_path, ray_local, registered, synthetic_root, client, s3_endpoint, s3_bucket, capsys
):
    import boto3

    _, version = registered
    source = upload_tree(_images(tmp_path, synthetic_root, 3), s3_bucket, "in", s3_endpoint)
    out = f"s3://{s3_bucket}/out"
    argv = ["--input", source, "--output", out, "--model", f"models:/unet/{version}"]
    argv += ["--experiment", EXPERIMENT, "--report", "--device", "cpu"]
    code, summary = run_main(segment.main, argv, capsys)
    assert code == 0 and summary["ok"] == 3, summary
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.tags["manifest"] == summary["manifest"] == f"{out}/manifest.parquet"
    assert run.data.tags["report"] == f"{out}/report.html" and run.data.params["output"] == out
    # The page and its images, read from the bucket into the run's artifacts.
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    page = s3.get_object(Bucket=s3_bucket, Key="out/report.html")["Body"].read()
    client.download_artifacts(run.info.run_id, "qc_report", str(tmp_path / "dl"))
    assert (tmp_path / "dl" / "qc_report" / "report.html").read_bytes() == page
    shown = set(re.findall(r'src="(report/[^"]+)"', page.decode()))
    assert shown
    for asset in shown:
        body = s3.get_object(Bucket=s3_bucket, Key=f"out/{asset}")["Body"].read()
        assert (tmp_path / "dl" / "qc_report" / asset).read_bytes() == body
