"""The local Ray of the integration tests: started by the first test that asks for it, stopped
after the last test of tests/integration/ (scope="package"), so that it does not hold CPUs and
memory while the other folders run."""

from __future__ import annotations

import os

import pytest


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
        include_dashboard=False,
        log_to_driver=True,
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
        runtime_env={"env_vars": {"RAY_DATA_DISABLE_PROGRESS_BARS": "1"}},
    )
    try:
        yield ray
    finally:
        ray.shutdown()
