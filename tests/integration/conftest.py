"""The local Ray of the integration tests: started by the first test that asks for it, stopped
after the last test of tests/integration/ (scope="package"), so that it does not hold CPUs and
memory while the other folders run.

These tests exercise the CPU path, on any machine: the local Ray has no GPUs and every test runs
with CUDA hidden (`cpu_path`), so the jobs' local rule ("GPU when this machine has CUDA") picks
the CPU on a GPU machine too. The GPU paths have their own tests (mark `gpu`) and the GPU lane
(scripts/gpu_check.sh)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def cpu_path(monkeypatch):
    """CUDA hidden from the jobs these tests run: in this process (torch.cuda.is_available, what
    the jobs' local device rule reads) and in the processes they start (CUDA_VISIBLE_DEVICES)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture(scope="package")
def ray_local(tmp_path_factory, s3_endpoint):
    """One local Ray for the integration tests (started after the S3 endpoint so that its
    workers inherit the AWS_* variables). More logical CPUs than cores, so that training
    workers and Ray Data tasks both get scheduled on a 2-core machine."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    ray.init(
        num_cpus=8,
        num_gpus=0,  # the CPU path, also on a GPU machine
        include_dashboard=False,
        log_to_driver=True,
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
        runtime_env={"env_vars": {"RAY_DATA_DISABLE_PROGRESS_BARS": "1"}},
    )
    try:
        yield ray
    finally:
        ray.shutdown()
