"""scripts/gpu_check.sh --cpu-smoke: the GPU lane's steps on CPU with small sizes, so that the
script itself is proven where no GPU is (CI). Every step runs, exits 0 and leaves the JSON
summary its folder should hold; the top summary lists them all."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.servers import child_env
from tests.support import REPO_ROOT

pytestmark = pytest.mark.slow

SCRIPT = REPO_ROOT / "scripts" / "gpu_check.sh"
STEPS = ["cpu_suite", "gpu_tests", "train", "segment", "evaluate", "export", "benchmark"]


def run_script(*args: str, home: Path, timeout: float = 1500) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        cwd=REPO_ROOT,
        env=child_env(HOME=str(home)),  # the demo set and Ray's token go to this HOME
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read(path: str | None) -> dict:
    assert path, "no summary.json"
    return json.loads(Path(path).read_text())


@pytest.mark.timeout(1800)
def test_cpu_smoke_runs_every_step_and_writes_their_summaries(tmp_path):
    out = tmp_path / "lane"
    done = run_script("--cpu-smoke", "--out", str(out), home=tmp_path / "home")
    summary = json.loads((out / "summary.json").read_text())
    assert json.loads(done.stdout.splitlines()[-1]) == summary
    steps = {s["name"]: s for s in summary["steps"]}
    failing = {n: Path(s["log"]).read_text()[-3000:] for n, s in steps.items() if s["exit_code"]}
    assert done.returncode == 0 and not failing, (failing, done.stderr[-2000:])
    assert list(steps) == STEPS and summary["mode"] == "cpu-smoke" and summary["ok"] is True
    for step in steps.values():
        assert step["seconds"] > 0 and Path(step["output"]) == out / step["name"], step

    suite, gpu = read(steps["cpu_suite"]["summary"]), read(steps["gpu_tests"]["summary"])
    assert suite["tests"] > 10 and suite["failures"] == suite["errors"] == 0, suite
    assert gpu["tests"] >= 1 and gpu["skipped"] == gpu["tests"], gpu  # no CUDA here: skipped

    train = read(steps["train"]["summary"])
    assert train["model_uri"] and train["alias_set"], train
    assert train["tracking_uri"] == f"sqlite:///{out / 'mlflow.db'}"
    segment = read(steps["segment"]["summary"])
    assert (segment["total"], segment["ok"], segment["failed"]) == (6, 6, 0), segment
    assert segment["model_version"] == train["model_uri"].rsplit("/", 1)[-1]
    assert len(list((out / "segment" / "masks" / "masks").glob("*.png"))) == 6
    evaluate = read(steps["evaluate"]["summary"])
    assert (evaluate["total"], evaluate["ok"]) == (6, 6) and 0 <= evaluate["mean_iou"] <= 1
    assert (out / "evaluate" / "scores.parquet").is_file()
    export = read(steps["export"]["summary"])
    assert Path(export["output"]) == out / "export" / "unet.onnx" and export["passed"], export
    bench = read(steps["benchmark"]["summary"])
    assert bench["environment"]["device"] == "cpu", bench["environment"]


def test_bad_arguments_are_refused_naming_the_fix(tmp_path):
    done = run_script("--steps", "train,deploy", "--cpu-smoke", home=tmp_path)
    assert done.returncode == 2 and "unknown step 'deploy'" in done.stderr
    assert "cpu_suite,gpu_tests,train" in done.stderr
    done = run_script("--bogus", home=tmp_path)
    assert done.returncode == 2 and "unknown argument '--bogus'" in done.stderr
