"""The README's first quick-start command, as a new user runs it: `python jobs/demo.py`, once
per session; the tests below read its outputs, its stdout and its stderr."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.support import REPO_ROOT

pytestmark = pytest.mark.e2e

RAY_NOISE = {
    "Ray Train's PreemptionWatcher advice (C++ core worker)": r"PreemptionWatcher.*max_restarts",
    "Ray Data's exclude_resources deprecation": r"RayDeprecationWarning|exclude_resources",
    "Ray Data's progress-bar notice": r"Progress bars disabled",
    "Ray Data's end-of-dataset line": r"Dataset \S+ execution finished in",
    "Ray Data's idle-actor warning": r"The minimum number of concurrent actors",
    "any Python warning": r"\b\w*Warning: ",
    "Ray's log deduplication notes": r"repeated \d+x across cluster|Ray deduplicates logs",
    "Ray's token notices": r"Token authentication is enabled|Generated new authentication token",
    "ray.init's banner": r"Started a local Ray instance",
    "MLflow's database set-up": r"Creating initial MLflow database tables|Updating database tables",
}
"""What Ray and MLflow printed at INFO before the jobs held it back (issue 14). Still printed,
as no setting removes them without hiding real errors: the driver's own C++ line for Ray Data's
pool actors (`core_worker.cc ... 'MapWorker(MapBatches(FusedPredictor))' ... max_restarts`,
ray-project/ray#53727) and MLflow's `Successfully registered model` / `Created version`."""

OUR_LINES = (
    r"INFO jobs\.common\.ray_cluster: starting a local Ray with \d+ logical CPUs",
    r"\(RayTrainWorker pid=\d+\)\S* rank 0 of 2 on cpu",
    r"\(RayTrainWorker pid=\d+\)\S* epoch 1/\d+  train_loss",
    r"INFO jobs\.training\.registry: models:/unet@champion -> version 1",
    r"INFO jobs\.inference\.pipeline: segment: 12/12 images \(0 failed\)",
    r"INFO jobs\.segment: done: 12 total, 12 ok, 0 failed",
)


@dataclass
class Demo:
    home: Path
    env: dict[str, str]
    done: subprocess.CompletedProcess


def user_env(home: Path) -> dict[str, str]:
    """This machine's environment as a new user's shell has it: no cluster, tracking server,
    credentials or test-only Ray settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "MLFLOW_LOGGING_LEVEL")
        and not k.startswith(("AWS_", "RAY_DATA_", "RAY_DEDUP"))
    }
    env["HOME"] = str(home)  # the generated demo set and checkpoints go to ~/.cache
    # The user of these tests has a laptop without a GPU ("rank 0 of 2 on cpu" below): CUDA
    # hidden, so that a GPU machine runs the same CPU demo (the GPU lane: scripts/gpu_check.sh).
    env["CUDA_VISIBLE_DEVICES"] = ""
    return env


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Demo:
    home = tmp_path_factory.mktemp("demo")
    env = user_env(home)
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "jobs" / "demo.py")],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return Demo(home, env, done)


def test_demo_trains_registers_and_segments(demo):
    tmp_path, done = demo.home, demo.done
    summaries = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    train, segment, summary = summaries[-3:]  # the demo's own summary is the last line
    assert train["alias_set"] and train["model_uri"] == "models:/unet/1"
    assert train["val_mean_iou"] > 0.8, train  # the preset learns the synthetic shapes
    assert done.stdout.splitlines()[-1].startswith("{") and summary["exit_code"] == 0
    assert (summary["model_uri"], summary["ok"]) == ("models:/unet/1", 12), summary
    assert train["tracking_uri"] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert (segment["ok"], segment["failed"], segment["model_version"]) == (12, 0, "1")

    out = tmp_path / "outputs" / "demo"
    masks = sorted((out / "segmented" / "masks").glob("*.png"))
    assert len(masks) == 12
    assert pq.read_table(out / "segmented" / "manifest.parquet").num_rows == 12
    picture = np.asarray(Image.open(out / "demo.png"))
    assert picture.ndim == 3 and picture.std() > 10  # a real picture, not a blank canvas
    assert "Demo finished" in done.stdout and str(out / "demo.png") in done.stdout
    report = out / "segmented" / "report.html"
    assert segment["report"] == str(report) and report.is_file()
    assert f"QC report    {report}" in done.stdout


def test_demo_console_shows_our_progress_not_rays(demo):
    stderr = demo.done.stderr
    noise = {
        what: [line for line in stderr.splitlines() if re.search(pattern, line)]
        for what, pattern in RAY_NOISE.items()
    }
    assert not any(noise.values()), {k: v for k, v in noise.items() if v}
    missing = [pattern for pattern in OUR_LINES if not re.search(pattern, stderr)]
    assert not missing, (missing, stderr[-4000:])


def test_debug_shows_rays_messages_again(demo):
    """The same job at --log-level DEBUG: what INFO holds back is printed again."""
    out = demo.home / "outputs" / "debug"
    images = demo.home / "outputs" / "demo" / "unlabelled" / "images"
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "jobs" / "segment.py"), "--input", str(images)]
        + ["--output", str(out), "--log-level", "DEBUG"],
        cwd=demo.home,
        env=demo.env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Started a local Ray instance" in done.stderr  # ray.init's own banner
    assert "execution finished in" in done.stderr  # Ray Data's, from the driver
    assert json.loads(done.stdout.splitlines()[-1])["ok"] == 12
