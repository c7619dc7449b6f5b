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
    smoke = gpu_benchmark.SMOKE_DEFAULTS
    # segment: every image given was counted, and the rate is those images over the job's time
    job = segment["job_summary"]
    assert segment["images"] == smoke["segment_images"] == job["total"] == job["ok"], segment
    assert job["failed"] == 0 and job["skipped"] == 0
    seconds = segment["job_pipeline_seconds"]
    assert 0 < seconds <= segment["job_wall_seconds"]
    assert segment["job_images_per_second"] == pytest.approx(segment["images"] / seconds, rel=0.01)
    assert segment["model_only_images_per_second"] > 0
    assert segment["job_vs_model_only"] == pytest.approx(
        segment["job_images_per_second"] / segment["model_only_images_per_second"],
        rel=0.01,
        abs=1e-3,  # the summary rounds ratios to 3 decimals
    )
    # train: the run's rate is the mean of its epochs after the first (the first warms up), both
    # loops over the same images and steps; the plain loop's likewise
    assert (train["images"], train["epochs"]) == (smoke["train_images"], smoke["train_epochs"])
    assert train["steps_per_epoch"] == smoke["train_images"] // smoke["train_batch_size"]
    per_epoch = train["per_epoch"]
    assert len(per_epoch["ray_train"]) == len(per_epoch["plain"]) == smoke["train_epochs"]
    assert all(v > 0 for v in per_epoch["ray_train"] + per_epoch["plain"]), per_epoch
    steady = per_epoch["ray_train"][1:]
    assert train["ray_train_images_per_second"] == pytest.approx(
        sum(steady) / len(steady), rel=0.01, abs=0.01
    )
    steady = per_epoch["plain"][1:]
    assert train["plain_images_per_second"] == pytest.approx(
        sum(steady) / len(steady), rel=0.01, abs=0.01
    )
    assert train["ray_vs_plain"] == pytest.approx(
        train["ray_train_images_per_second"] / train["plain_images_per_second"],
        rel=0.01,
        abs=1e-3,  # the summary rounds ratios to 3 decimals
    )
