"""Ray wiring shared by the segment and evaluate jobs: decode tasks -> predictor actors.

    rows (input URI, relative path)            driver: listed once, small
      -> map_batches(decode_batch)              CPU tasks: read bytes, decode, per-row errors
      -> map_batches(Predictor, ActorPool)      GPU/CPU actors: model loaded once per actor
      -> (the caller adds its last stage)       CPU tasks: encode + write masks / score

Ray Data streams blocks through the stages, so decoding and writing overlap with the model and
memory stays bounded however many images there are. The checkpoint is read once on the driver
and shared through the object store (works on a multi-node cluster; no actor calls MLflow).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any

from jobs.image_io import decode_batch
from jobs.predictor import Predictor, PredictorSettings
from jobs.segment_config import InferenceConfig

logger = logging.getLogger(__name__)

MAX_INPUT_BLOCKS = 20_000
"""Cap on the number of input blocks (very large listings get bigger blocks instead)."""


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def resolve_endpoint(cfg: InferenceConfig) -> str | None:
    """The S3 endpoint, fixed on the driver and passed to every task explicitly."""
    return (
        cfg.s3_endpoint_url
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or None
    )


def init_ray(cfg: InferenceConfig) -> bool:
    """Connect to --ray-address / $RAY_ADDRESS, or start a local Ray; True when this call did
    (the caller then shuts it down). A Ray already running in-process is used as it is.
    AWS_* variables of the driver are forwarded to the workers (jobs.ray_setup)."""
    import ray

    from jobs.ray_setup import forwarded_env

    if ray.is_initialized():
        return False
    runtime_env = {"env_vars": forwarded_env()}
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        # Inside `ray job submit` the job's runtime_env already reaches the workers, and Ray
        # refuses a driver runtime_env that repeats one of its env vars.
        submitted = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
        ray.init(address=address, runtime_env=None if submitted else runtime_env)
        return True
    # More logical CPUs than cores on small machines: decode and write tasks then run beside
    # the predictor actor instead of queueing behind it (they are short and I/O-bound).
    num_cpus = cfg.num_cpus or max(4, os.cpu_count() or 1)
    ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env=runtime_env)
    return True


def local_cores(cfg: InferenceConfig) -> int | None:
    """This machine's cores when the job runs on a local Ray (no --ray-address or $RAY_ADDRESS);
    None on a cluster, whose nodes may differ from the driver's."""
    if cfg.ray_address or os.environ.get("RAY_ADDRESS"):
        return None
    return os.cpu_count() or 1


def actor_gpus(cfg: InferenceConfig) -> float:
    """--num-gpus-per-actor, else 1 when the cluster has GPUs, else 0."""
    if cfg.num_gpus_per_actor is not None:
        return cfg.num_gpus_per_actor
    import ray

    return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


@dataclass(frozen=True)
class ActorPool:
    """Size of the predictor actor pool and the torch threads of each CPU actor."""

    min_size: int
    max_size: int
    torch_threads: int
    """0 = keep torch's setting (GPU actors)."""


def actor_pool(
    cfg: InferenceConfig,
    *,
    num_gpus: float,
    cluster: dict[str, float],
    local_cores: int | None,
) -> ActorPool:
    """--min/--max-actors and --torch-threads, else a fixed pool that fills the hardware.

    GPU: one actor per ``num_gpus`` of the cluster's GPUs. CPU: one single-threaded actor per
    core (``local_cores``, the cores of a local Ray this job started; on a cluster half its
    logical CPUs, the rest left to decode and write tasks). Single-threaded actors do not stall
    at OpenMP barriers while a decode task holds a core: on 2 cores, 2 actors x 1 thread ran the
    job at 12.0 images/s against 10.8 for 1 actor x 2 threads (benchmarks/segment_throughput.py).
    """
    if cfg.max_actors:
        size = cfg.max_actors
    elif num_gpus > 0:
        size = int(cluster.get("GPU", 0) // num_gpus)
    else:
        size = local_cores or int(cluster.get("CPU", 0) // 2)
    size = max(1, size)
    if num_gpus > 0 or cfg.torch_threads:
        threads = cfg.torch_threads
    else:
        threads = max(1, (local_cores or 1) // size)
    return ActorPool(min_size=cfg.min_actors or size, max_size=size, torch_threads=threads)


def predictor_settings(
    cfg: InferenceConfig,
    *,
    use_gpu: bool,
    torch_threads: int,
    confidence_map: bool = False,
    keep_pixels: bool = False,
) -> PredictorSettings:
    return PredictorSettings(
        tile_size=cfg.tile_size,
        tile_overlap=cfg.tile_overlap,
        tta=cfg.tta,
        amp=cfg.amp_flag,
        use_gpu=use_gpu,
        torch_threads=torch_threads,
        batch_size=cfg.forward_batch(use_gpu),
        confidence_map=confidence_map,
        keep_pixels=keep_pixels,
    )


def cpu_stage_args(cfg: InferenceConfig, *, rows: int, batch_size: int) -> dict[str, Any]:
    """Resources of a CPU task stage (decode; encode/write or scoring) over ``rows`` rows."""
    import ray

    size = cfg.cpu_tasks or max(1, int(ray.cluster_resources().get("CPU", 1) // 4))
    size = min(size, max(1, math.ceil(rows / batch_size)))  # never more tasks than batches
    return {"num_cpus": cfg.decode_cpus, "compute": ray.data.TaskPoolStrategy(size=size)}


def in_flight_limit_mb(
    cfg: InferenceConfig, image_bytes: int | None, rows_per_call: int, actors: int
) -> int:
    """--max-in-flight-mb, else 12 calls' worth of ``image_bytes`` per actor (at least 32 MiB):
    enough to keep every actor fed, small enough that memory does not grow with the input."""
    if cfg.max_in_flight_mb:
        return cfg.max_in_flight_mb
    per_image = image_bytes or 4 * 2**20
    return max(32, math.ceil(12 * rows_per_call * actors * per_image / 2**20))


def build_prediction_dataset(
    rows: list[dict[str, Any]],
    *,
    cfg: InferenceConfig,
    checkpoint_ref: Any,
    channels: int,
    endpoint_url: str | None,
    confidence_map: bool = False,
    keep_pixels: bool = False,
    image_bytes: int | None = None,
):
    """A lazy Dataset of ``rows`` (each with an ``input`` URI) after decode and predict;
    ``image_bytes`` (decoded size of a typical input) sizes the in-flight limit."""
    import ray

    num_gpus = actor_gpus(cfg)
    pool = actor_pool(
        cfg, num_gpus=num_gpus, cluster=ray.cluster_resources(), local_cores=local_cores(cfg)
    )
    logger.info(
        "predictor pool: %d-%d actors, %s",
        pool.min_size,
        pool.max_size,
        f"{num_gpus:g} GPU each" if num_gpus else f"{pool.torch_threads} torch thread(s) each",
    )
    settings = predictor_settings(
        cfg,
        use_gpu=num_gpus > 0,
        torch_threads=pool.torch_threads,
        confidence_map=confidence_map,
        keep_pixels=keep_pixels,
    )
    call_rows = cfg.call_rows(num_gpus > 0)
    rows_per_block = max(call_rows, math.ceil(len(rows) / MAX_INPUT_BLOCKS))
    ds = ray.data.from_items(
        rows, override_num_blocks=max(1, math.ceil(len(rows) / rows_per_block))
    )
    # Decoding is much faster than the model: without a limit Ray Data decodes ahead until a
    # share of the whole object store is full, so memory would grow with the number of images.
    limit_mb = in_flight_limit_mb(cfg, image_bytes, call_rows, pool.max_size)
    options = ds.context.execution_options  # this pipeline's own copy of the DataContext
    options.resource_limits = options.resource_limits.copy(object_store_memory=limit_mb * 2**20)
    logger.info("at most %d MiB of blocks in flight in the object store", limit_mb)
    ds = ds.map_batches(
        decode_batch,
        fn_kwargs={"channels": channels, "endpoint_url": endpoint_url},
        batch_format="pyarrow",
        batch_size=call_rows,
        **cpu_stage_args(cfg, rows=len(rows), batch_size=call_rows),
    )
    return ds.map_batches(
        Predictor,
        fn_constructor_kwargs={"checkpoint": checkpoint_ref, "settings": settings},
        compute=ray.data.ActorPoolStrategy(min_size=pool.min_size, max_size=pool.max_size),
        batch_format="pyarrow",
        batch_size=call_rows,
        num_gpus=num_gpus,
        num_cpus=cfg.num_cpus_per_actor,
    )


@dataclass
class Progress:
    """Periodic progress lines on stderr (logging): done / total, rate, failures, ETA."""

    total: int
    every: float = 10.0
    label: str = "segment"
    done: int = 0
    failed: int = 0

    def __post_init__(self) -> None:
        self.start = self._last = time.perf_counter()

    def update(self, done: int, failed: int = 0) -> None:
        self.done += done
        self.failed += failed
        now = time.perf_counter()
        if now - self._last >= self.every or self.done >= self.total:
            self._last = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            logger.info(
                "%s: %d/%d images (%d failed), %.2f images/s, eta %.0f s",
                self.label,
                self.done,
                self.total,
                self.failed,
                rate,
                eta,
            )
