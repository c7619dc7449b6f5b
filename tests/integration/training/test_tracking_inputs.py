"""What a training run says it was trained on, and how: its dataset inputs (one per split,
with source, counts, class map and a digest that follows the listing), MLflow's source and git
tags (and the model version's code_version from them), system metrics per worker, and the
loss figure. A local Ray, a sqlite MLflow, the synthetic set; tiny models, 1-2 epochs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.training.test_train import TINY, run_job
from tests.support import REPO_ROOT

pytestmark = pytest.mark.integration


def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True)


def inputs_of(client, run_id: str) -> dict[str, tuple[str, dict, dict]]:
    """context -> (digest, source, profile) of the run's dataset inputs; one per context."""
    from jobs.training.mlflow_inputs import context_of

    out = {}
    for d in client.get_run(run_id).inputs.dataset_inputs:
        context = context_of(d)
        assert context not in out, f"two {context} inputs"
        out[context] = (d.dataset.name, d.dataset.digest, json.loads(d.dataset.source),
                        json.loads(d.dataset.profile))  # fmt: skip
    return out


def split_of(run_id: str) -> dict:
    import mlflow

    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="split.json")
    return json.loads(Path(path).read_text())


def test_run_records_its_code_system_metrics_and_curves(
    ray_local, mlflow_uri, synthetic_root, tmp_path, monkeypatch, capsys
):
    import mlflow
    from mlflow.tracking import MlflowClient
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    # as a user runs it (python jobs/train.py): MLflow reads the source and git from argv[0]
    entry = str(REPO_ROOT / "jobs" / "train.py")
    monkeypatch.setattr(sys, "argv", [entry])
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")  # forwarded to workers
    head_before = git("rev-parse", "HEAD").stdout.strip()
    code, summary = run_job(
        ["--data", str(synthetic_root), "--epochs", "2", "--num-workers", "2",
         "--run-name", "it-record", "--storage-path", str(tmp_path / "runs"),
         "--system-metrics", *TINY],
        capsys,
    )  # fmt: skip
    assert code == 0
    client = MlflowClient()
    run = client.get_run(summary["run_id"])
    tags = run.data.tags
    assert tags["mlflow.source.name"] == entry and tags["mlflow.source.type"] == "LOCAL"
    version = client.get_model_version(summary["model_name"], summary["model_version"])
    if head_before:  # a git checkout: the commit of this code (HEAD moves if someone commits)
        commit = tags["mlflow.source.git.commit"]
        assert re.fullmatch(r"[0-9a-f]{40}", commit), commit
        assert git("merge-base", "--is-ancestor", head_before, commit).returncode == 0
        assert git("merge-base", "--is-ancestor", commit, "HEAD").returncode == 0
        assert version.tags["code_version"] == commit
    else:
        import unet_core

        assert "mlflow.source.git.commit" not in tags
        assert version.tags["code_version"] == f"unet-ray {unet_core.__version__}"
    assert run.data.params["system_metrics"] == "True"

    # one node id per worker, each with at least one sample of its machine's CPU use
    for rank in (0, 1):
        key = f"system/worker_{rank}/cpu_utilization_percentage"
        samples = client.get_metric_history(run.info.run_id, key)
        assert samples and all(0.0 <= m.value <= 100.0 for m in samples), key
        assert client.get_metric_history(
            run.info.run_id, f"system/worker_{rank}/system_memory_usage_megabytes"
        )
    assert not [k for k in run.data.metrics if re.fullmatch(r"system/[a-z_]+", k)]  # no bare ones

    figures = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert "figures/loss_curve.png" in figures
    png = Path(
        mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path="figures/loss_curve.png"
        )
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size == (1000, 400)
        assert len(img.convert("RGB").getcolors(maxcolors=1 << 20)) > 20  # drawn, not blank

    # the inputs of this run: the same root for both splits, counts as in split.json
    split, root = split_of(run.info.run_id), str(Path(synthetic_root).resolve())
    inputs = inputs_of(client, run.info.run_id)
    assert set(inputs) == {"training", "validation"}
    for context, keys in (("training", split["train"]), ("validation", split["val"])):
        _, _, source, profile = inputs[context]
        assert source == {"uri": root} and profile["pairs"] == len(keys) > 0


def test_inputs_follow_the_listing_and_a_resumed_run_adds_none(
    ray_local, mlflow_uri, synthetic_root, tmp_path, monkeypatch, capsys
):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    data = tmp_path / "cells"
    shutil.copytree(synthetic_root, data)
    classes = json.loads((data / "classes.json").read_text())

    def train(run_name: str, epochs: int) -> dict:
        code, summary = run_job(
            ["--data", str(data), "--epochs", str(epochs), "--num-workers", "1",
             "--run-name", run_name, "--storage-path", str(tmp_path / "runs"), *TINY],
            capsys,
        )  # fmt: skip
        assert code == 0
        return summary

    client = MlflowClient()
    first = train("it-inputs", 1)
    inputs = inputs_of(client, first["run_id"])
    split = split_of(first["run_id"])
    assert {context: name for context, (name, *_) in inputs.items()} == {
        "training": "cells-train",
        "validation": "cells-validation",
    }
    for context, keys in (("training", split["train"]), ("validation", split["val"])):
        _, digest, source, profile = inputs[context]
        assert source == {"uri": str(data.resolve())} and profile["pairs"] == len(keys)
        assert profile["class_map"]["classes"] == classes["classes"] and len(digest) == 16
    # off by default on a local Ray: no worker logged system metrics
    assert not [k for k in client.get_run(first["run_id"]).data.metrics if k.startswith("system/")]

    # the same run resubmitted (one epoch more), on the same data: no second input
    resumed = train("it-inputs", 2)
    assert resumed["run_id"] == first["run_id"] and resumed["epochs"] == 2
    assert inputs_of(client, first["run_id"]) == inputs
    assert len(client.get_run(first["run_id"]).inputs.dataset_inputs) == 2

    # a training pair removed: the training digest changes, the validation one (same files,
    # the split hashes stems) does not
    gone = split["train"][0]
    (data / "images" / f"{gone}.png").unlink()
    (data / "masks" / f"{gone}.png").unlink()
    other = inputs_of(client, train("it-inputs-less", 1)["run_id"])
    assert other["training"][1] != inputs["training"][1]
    assert other["training"][3]["pairs"] == len(split["train"]) - 1
    assert other["training"][3]["listing_sha256"] != inputs["training"][3]["listing_sha256"]
    assert other["validation"][1:] == inputs["validation"][1:]
