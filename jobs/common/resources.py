"""How much of the cluster each stage asks for: training workers, predictor actors, CPU tasks.

Every policy reads a `ClusterView` taken when the job starts (what the cluster has now, and
whether an autoscaler can add more), and an explicit flag always wins over it. On a cluster
nothing is sized from a snapshot of its resources alone: pools grow as nodes join.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from jobs.common.cluster_info import UNBOUNDED_POOL, ClusterView

log = logging.getLogger(__name__)


def cpus_per_train_worker(view: ClusterView, *, num_workers: int) -> float:
    """Logical CPUs each training worker reserves, when --cpus-per-worker is not given.

    Local Ray: 1, but never more than leaves a quarter of its CPUs (at least one) to Ray Data;
    on a 2-CPU node two workers get 0.5 each. Cluster: 1, Ray Train's own default, on the
    nodes the autoscaler brings up (GPU nodes hold several CPUs per GPU; the rest decode data).
    """
    if not view.local:
        return 1.0
    total = view.resources.get("CPU", 1.0)
    for_data = max(1.0, 0.25 * total)
    share = min(1.0, (total - for_data) / num_workers)
    return max(0.1, math.floor(share * 100) / 100)


def worker_resources(
    *, use_gpu: bool, cpus_per_worker: float, gpus_per_worker: float = 1.0
) -> dict[str, float]:
    """resources_per_worker of Ray Train's ScalingConfig."""
    return {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if use_gpu else {})}


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
    view: ClusterView,
    fused: bool = False,
    cpus_per_actor: float = 1.0,
) -> ActorPool:
    """The flags (0 = auto), else a pool that fills the hardware the cluster can have.

    Most actors: GPU, one per ``num_gpus`` of the GPUs the cluster has or can launch; CPU, one
    single-threaded actor per core of a local Ray, on a cluster one per ``cpus_per_actor`` of
    the logical CPUs it can have when ``fused`` (each actor decodes and writes its own
    images), else half of them (the rest left to decode and write tasks). When an autoscaler may add nodes and Ray
    does not publish how many, at most `UNBOUNDED_POOL`. Fewest: on a local Ray or a fixed
    cluster the whole pool (no ramp-up); on an autoscaling cluster 1, and Ray Data adds actors
    (asking the autoscaler for their nodes) while work queues up. Single-threaded CPU actors do
    not stall at OpenMP barriers while a decode task holds a core (docs/benchmarks.md).
    """
    cores = view.local_cores
    if max_actors:
        size = max_actors
    elif num_gpus > 0:
        most = view.most("GPU")
        size = UNBOUNDED_POOL if most is None else int(most // num_gpus)
    elif cores:
        size = cores
    else:
        most = view.most("CPU")
        per_actor = (cpus_per_actor or 1.0) if fused else 2
        size = UNBOUNDED_POOL if most is None else int(most // per_actor)
    size = max(1, size)
    smallest = min_actors or (1 if view.autoscaler else size)
    auto_threads = num_gpus == 0 and not torch_threads  # CPU actors share the local cores
    threads = max(1, (cores or 1) // size) if auto_threads else torch_threads
    return ActorPool(min_size=min(smallest, size), max_size=size, torch_threads=threads)


def cpu_tasks(requested: int, *, rows: int, batch_size: int, view: ClusterView) -> int | None:
    """Tasks of a CPU stage running at once: ``requested``, else on a local Ray a quarter of
    its logical CPUs (at least 1; each task process costs a Python + torch start-up that the
    model's cores pay for), never more than there are batches. None on a cluster: Ray Data
    runs as many as the nodes it has hold, and more as nodes join."""
    if not requested and not view.local:
        return None
    size = requested or max(1, int(view.resources.get("CPU", 1) // 4))
    return min(size, max(1, math.ceil(rows / batch_size)))


CPU_BATCH_PIXELS = 2**17
"""Pixels per forward pass on CPU. Measured on 2 cores (w16 depth-4 UNet, 1 thread, bf16;
images/s at batch 1 -> best): 16x16 130 -> 5,060 (64), 32x32 260 -> 960 (32), 64x64 117 ->
395 (32), 128x128 82 -> 108 (8), 256x256 23 -> 27 (4), 480x360 5.9 -> 6.3 (4): batches pay
while an image has fewer than about 2^17 pixels, and no more than 64 images."""
GPU_BATCH_PIXELS = 2**22
"""Pixels per forward pass on a GPU: 16 images of 512x512."""
MAX_BATCH = {False: 64, True: 256}


def forward_batch(pixels: int, *, use_gpu: bool) -> int:
    """Images of ``pixels`` pixels per forward pass (``--batch-size 0``): as many as make
    `CPU_BATCH_PIXELS` (`GPU_BATCH_PIXELS`), at least 1, at most `MAX_BATCH`."""
    budget = GPU_BATCH_PIXELS if use_gpu else CPU_BATCH_PIXELS
    return max(1, min(MAX_BATCH[use_gpu], budget // max(1, pixels)))


BLOCK_BYTES = 64 * 2**20
"""Decoded bytes per block of a prediction pipeline (Ray Data's own default cap is 128 MiB)."""
MAX_BLOCK_ROWS = 1024
"""Most images per block. Ray Data's driver keeps some state per block it has executed (we
measured 7-37 KiB per block on Ray 2.60), so blocks of many small images are what keeps the
driver's memory flat over millions of inputs; batches inside a block stay --rows-per-call."""


BLOCKS_PER_ACTOR = 16
"""Blocks per actor of a short input: an actor that finishes early takes another block, so
the last blocks, not whole shares, set how long the slowest actor runs."""


def rows_per_block(*, rows: int, rows_per_call: int, image_bytes: int | None, actors: int) -> int:
    """Images per block: up to `BLOCK_BYTES` of decoded pixels and `MAX_BLOCK_ROWS` images, at
    least one call, a whole number of calls, and small enough that every actor gets
    `BLOCKS_PER_ACTOR` blocks of a short input."""
    per_image = image_bytes or 4 * 2**20
    by_bytes = min(MAX_BLOCK_ROWS, BLOCK_BYTES // per_image)
    by_spread = math.ceil(rows / max(1, BLOCKS_PER_ACTOR * actors))
    size = min(by_bytes, by_spread)
    return max(rows_per_call, size // rows_per_call * rows_per_call)


def in_flight_limit_mb(
    requested: int,
    *,
    image_bytes: int | None,
    rows_per_call: int,
    actors: int,
    rows_per_block: int = 0,
) -> int:
    """``requested`` MiB, else 12 calls' (at least 3 blocks') worth of ``image_bytes`` per
    actor, at least 32 MiB: enough to keep every actor fed, small enough that memory does
    not grow with the input."""
    if requested:
        return requested
    per_image = image_bytes or 4 * 2**20
    rows = max(12 * rows_per_call, 3 * rows_per_block)
    return max(32, math.ceil(rows * actors * per_image / 2**20))
