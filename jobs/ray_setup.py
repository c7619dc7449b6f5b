"""Connect to Ray (or start a local one) and size the training workers.

- Ray already initialised in this process (tests, notebooks): used as is, never shut down.
- `--ray-address` / $RAY_ADDRESS (also set by `ray job submit`): connect to that cluster.
- Otherwise a local Ray with twice as many logical CPUs as cores (at least 4): training
  workers and Ray Data's read/decode tasks then both get scheduled on a small machine. Its
  dashboard stays on: Ray Train's placement-group cleaner queries the state API through it.

CPU per worker defaults to 1, but never more than leaves a quarter of the cluster's CPUs
(at least one) to Ray Data; on a 2-CPU node two workers get 0.5 each. AWS_* variables set
for the driver (credentials, region, S3 endpoint) are forwarded to tasks and workers, which
do not inherit the driver's environment.
"""

from __future__ import annotations

import json
import logging
import math
import os

import ray

log = logging.getLogger(__name__)

FORWARDED_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
)


def forwarded_env() -> dict[str, str]:
    """AWS_* variables of the driver that its job's runtime_env does not already set.

    Inside `ray job submit` the job's runtime_env reaches every worker by itself, and Ray
    refuses to merge a driver runtime_env that sets the same variable again.
    """
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    in_job = (job.get("runtime_env") or {}).get("env_vars") or {}
    return {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k) and k not in in_job}


def init_ray(address: str | None = None) -> bool:
    """Make sure Ray is up; True when this call started or connected it (shut down later)."""
    if ray.is_initialized():
        return False
    runtime_env = {"env_vars": forwarded_env()}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        return True
    cpus = max(4, 2 * (os.cpu_count() or 1))
    log.info("starting a local Ray with %d logical CPUs on %s cores", cpus, os.cpu_count())
    ray.init(num_cpus=cpus, runtime_env=runtime_env, log_to_driver=True)
    return True


def worker_resources(
    num_workers: int, *, use_gpu: bool | None = None, cpus_per_worker: float | None = None
) -> tuple[bool, dict[str, float]]:
    """(use_gpu, resources_per_worker) for ScalingConfig, from the cluster's resources."""
    cluster = ray.cluster_resources()
    gpus = cluster.get("GPU", 0.0)
    if use_gpu is None:
        use_gpu = gpus >= num_workers
    elif use_gpu and gpus < num_workers:
        log.warning(
            "%d workers with one GPU each, but the cluster has %g GPUs now: training waits "
            "until an autoscaler adds them (or pass --no-gpu / fewer --num-workers)",
            num_workers,
            gpus,
        )
    if cpus_per_worker is None:
        total = cluster.get("CPU", 1.0)
        for_data = max(1.0, 0.25 * total)
        cpus_per_worker = min(1.0, (total - for_data) / num_workers)
        cpus_per_worker = max(0.1, math.floor(cpus_per_worker * 100) / 100)
    resources = {"CPU": cpus_per_worker}
    if use_gpu:
        resources["GPU"] = 1.0
    return use_gpu, resources


def quiet_ray_logs(level: str) -> None:
    """Ray Data progress lines and per-report Ray Train logs only at DEBUG: the job prints
    one line per epoch (from rank 0) instead."""
    import ray.data

    if logging.getLevelName(level) > logging.DEBUG:
        context = ray.data.DataContext.get_current()  # carried to the split coordinators too
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)


def data_remote_args() -> dict:
    """Ray Data task options: the forwarded AWS_* variables (a no-op when none are set)."""
    env = forwarded_env()
    return {"runtime_env": {"env_vars": env}} if env else {}
