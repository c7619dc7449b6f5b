"""Connect to Ray, or start a local one: the same rules for every job.

- Ray already initialised in this process (tests, notebooks): used as is, never shut down.
- `--ray-address` / $RAY_ADDRESS (also set by `ray job submit`): connect to that cluster.
- Otherwise a local Ray with twice as many logical CPUs as cores (at least 4), unless the job
  asks for a count: training workers or predictor actors take about one per core, and Ray
  Data's short, I/O-bound read/decode/write tasks then still get scheduled beside them.

The driver's non-secret AWS settings (region, S3 endpoint) are forwarded to tasks and workers,
which do not inherit the driver's environment. Credentials never are: they would show in the
job's metadata, a session token would expire during a long job, and they would override the
nodes' own instance profile or IRSA/Pod Identity credentials (the standard AWS chain on each
node; `cluster/README.md`).
"""

from __future__ import annotations

import json
import logging
import os

import ray

from jobs.common.logs import ray_init_options

log = logging.getLogger(__name__)

FORWARDED_ENV = (
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
)


def forwarded_env() -> dict[str, str]:
    """Region and endpoint settings of the driver that its job's runtime_env does not already
    set (never credentials).

    Inside `ray job submit` the job's runtime_env reaches every worker by itself, and Ray
    refuses to merge a driver runtime_env that sets the same variable again.
    """
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    in_job = (job.get("runtime_env") or {}).get("env_vars") or {}
    return {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k) and k not in in_job}


def cluster_address(address: str | None = None) -> str | None:
    """The cluster a job connects to: the flag, else $RAY_ADDRESS; None = a local Ray."""
    return address or os.environ.get("RAY_ADDRESS") or None


def local_ray_cpus(cores: int | None = None) -> int:
    """Logical CPUs of a local Ray: 2 x cores, at least 4."""
    return max(4, 2 * (cores or os.cpu_count() or 1))


def connect_ray(
    address: str | None = None, *, num_cpus: int | None = None, dashboard: bool = True
) -> bool:
    """Make sure Ray is up; True when this call started or connected it (the caller shuts it
    down). ``num_cpus`` and ``dashboard`` apply to a local Ray only (Ray Train's
    placement-group cleaner queries the state API through the dashboard; batch jobs skip it
    to leave its CPU to the model)."""
    if ray.is_initialized():
        return False
    options = ray_init_options()  # Ray's own chatter at DEBUG only (jobs.common.logs)
    runtime_env = {"env_vars": forwarded_env(), **options.pop("runtime_env", {})}
    address = cluster_address(address)
    if address:
        log.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True, **options)
        return True
    cpus = num_cpus or local_ray_cpus()
    log.info("starting a local Ray with %d logical CPUs on %s cores", cpus, os.cpu_count())
    started = ray.init(
        num_cpus=cpus,
        include_dashboard=dashboard,
        runtime_env=runtime_env,
        log_to_driver=True,
        **options,
    )
    if started.dashboard_url:
        log.info("Ray dashboard at http://%s", started.dashboard_url)
    return True


def data_remote_args() -> dict:
    """Ray Data task options: the forwarded AWS_* variables (a no-op when none are set)."""
    env = forwarded_env()
    return {"runtime_env": {"env_vars": env}} if env else {}
