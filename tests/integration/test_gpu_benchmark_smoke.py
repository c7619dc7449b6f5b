"""benchmarks/gpu_benchmark.py --smoke-cpu with every part: the segment job and the training job
on their own local Rays, tiny, on the CPU (about 90 s on 2 cores)."""

from __future__ import annotations

import json

import pytest

from benchmarks import gpu_benchmark

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_smoke_runs_every_part(tmp_path):
    out = tmp_path / "smoke.json"
    code = gpu_benchmark.main(["--smoke-cpu", "--out", str(out), "--workdir", str(tmp_path)])
    result = json.loads(out.read_text())
    assert code == 0, result
    segment, train = result["segment"], result["train"]
    assert segment["job_summary"]["ok"] == segment["images"]
    assert segment["job_images_per_second"] > 0 and segment["model_only_images_per_second"] > 0
    assert train["ray_train_images_per_second"] > 0 and train["plain_images_per_second"] > 0
    assert len(train["per_epoch"]["ray_train"]) == len(train["per_epoch"]["plain"]) == 2
