"""The README's first quick-start command, as a new user runs it: `python jobs/demo.py`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.support import REPO_ROOT

pytestmark = pytest.mark.e2e


def test_demo_trains_registers_and_segments(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI") and not k.startswith("AWS_")
    }
    env["HOME"] = str(tmp_path)  # the generated demo set and checkpoints go to ~/.cache
    env["RAY_DATA_DISABLE_PROGRESS_BARS"] = "1"
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "jobs" / "demo.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summaries = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    train, segment = summaries[-2], summaries[-1]
    assert train["alias_set"] and train["model_uri"] == "models:/unet/1"
    assert train["val_miou"] > 0.8, train  # the preset learns the synthetic shapes
    assert train["tracking_uri"] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert (segment["ok"], segment["failed"], segment["model_version"]) == (12, 0, "1")

    out = tmp_path / "outputs" / "demo"
    masks = sorted((out / "segmented" / "masks").glob("*.png"))
    assert len(masks) == 12
    assert pq.read_table(out / "segmented" / "manifest.parquet").num_rows == 12
    picture = np.asarray(Image.open(out / "demo.png"))
    assert picture.ndim == 3 and picture.std() > 10  # a real picture, not a blank canvas
    assert "Demo finished" in done.stdout and str(out / "demo.png") in done.stdout
