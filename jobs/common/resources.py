"""How much of the cluster each stage asks for: training workers, predictor actors, CPU tasks.

Every policy reads the cluster's resources (``ray.cluster_resources()``) once, when the job
builds its trainer or pipeline, and an explicit flag always wins over it.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import ray

from jobs.common.ray_cluster import cluster_address

log = logging.getLogger(__name__)


def local_cores(address: str | None = None) -> int | None:
    """This machine's cores when the job runs on a local Ray (no --ray-address or $RAY_ADDRESS);
    None on a cluster, whose nodes may differ from the driver's."""
    if cluster_address(address):
        return None
    return os.cpu_count() or 1


def worker_resources(
    num_workers: int, *, use_gpu: bool | None = None, cpus_per_worker: float | None = None
) -> tuple[bool, dict[str, float]]:
    """(use_gpu, resources_per_worker) of Ray Train's ScalingConfig.

    GPU: by default when the cluster has a GPU per worker. CPU per worker: 1, but never more
    than leaves a quarter of the cluster's CPUs (at least one) to Ray Data; on a 2-CPU node two
    workers get 0.5 each.
    """
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


def actor_gpus(requested: float | None) -> float:
    """GPUs per predictor actor: ``requested``, else 1 when the cluster has GPUs, else 0."""
    if requested is not None:
        return requested
    return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


@dataclass(frozen=True)
class ActorPool:
    """Size of the predictor actor pool and the torch threads of each CPU actor."""

    min_size: int
    max_size: int
    torch_threads: int
    """0 = keep torch's setting (GPU actors)."""


def actor_pool(
    *,
    min_actors: int,
    max_actors: int,
    torch_threads: int,
    num_gpus: float,
    cluster: dict[str, float],
    local_cores: int | None,
) -> ActorPool:
    """The flags (0 = auto), else a fixed pool that fills the hardware.

    GPU: one actor per ``num_gpus`` of the cluster's GPUs. CPU: one single-threaded actor per
    core (``local_cores``, the cores of a local Ray this job started; on a cluster half its
    logical CPUs, the rest left to decode and write tasks). Single-threaded actors do not stall
    at OpenMP barriers while a decode task holds a core (measured: README, batch segmentation).
    """
    if max_actors:
        size = max_actors
    elif num_gpus > 0:
        size = int(cluster.get("GPU", 0) // num_gpus)
    else:
        size = local_cores or int(cluster.get("CPU", 0) // 2)
    size = max(1, size)
    auto_threads = num_gpus == 0 and not torch_threads  # CPU actors share the local cores
    threads = max(1, (local_cores or 1) // size) if auto_threads else torch_threads
    return ActorPool(min_size=min_actors or size, max_size=size, torch_threads=threads)


def cpu_tasks(requested: int, *, rows: int, batch_size: int) -> int:
    """Tasks of a CPU stage running at once: ``requested``, else a quarter of the cluster's
    logical CPUs (at least 1); never more than there are batches."""
    size = requested or max(1, int(ray.cluster_resources().get("CPU", 1) // 4))
    return min(size, max(1, math.ceil(rows / batch_size)))


def in_flight_limit_mb(
    requested: int, *, image_bytes: int | None, rows_per_call: int, actors: int
) -> int:
    """``requested`` MiB, else 12 calls' worth of ``image_bytes`` per actor (at least 32 MiB):
    enough to keep every actor fed, small enough that memory does not grow with the input."""
    if requested:
        return requested
    per_image = image_bytes or 4 * 2**20
    return max(32, math.ceil(12 * rows_per_call * actors * per_image / 2**20))
