"""Ray wiring shared by the segment and evaluate jobs: read, decode, predict, then a sink.

Staged (GPU actors: CPU tasks feed the GPU):

    rows (input URI, relative path)            a list, or a Dataset in the object store
      -> map_batches(decode_images)             CPU tasks: read bytes, decode, per-row errors
      -> map_batches(Predictor, ActorPool)      GPU actors: model loaded once per actor
      -> map_batches(run_sink)                  CPU tasks: encode + write masks / score

Fused (CPU actors, the default there): ``map_batches(FusedPredictor, ActorPool)`` runs the
same three steps inside each actor, one single-threaded actor per core: no object-store hop
of decoded pixels and no decode or write task processes competing for the cores the model
needs. ``--fused/--no-fused`` forces either; both give the same bytes and manifest rows.

Ray Data streams blocks through the stages, so decoding and writing overlap with the model and
memory stays bounded however many images there are. The checkpoint is read once on the driver
and shared through the object store (works on a multi-node cluster; no actor calls MLflow).
The sizes of the actor pool, the task pools and the in-flight limit are `jobs.common.resources`
policies.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from jobs.common import resources
from jobs.common.cluster_info import ClusterView
from jobs.inference.config import InferenceConfig
from jobs.inference.decode import decode_images
from jobs.inference.predictor import Predictor, PredictorOptions
from jobs.inference.session import PredictorActors
from unet_core.image_files import DecodeOptions

logger = logging.getLogger(__name__)


def predictor_options(
    cfg: InferenceConfig,
    *,
    use_gpu: bool,
    torch_threads: int,
    confidence_map: bool = False,
    keep_pixels: bool = False,
) -> PredictorOptions:
    return PredictorOptions(
        tile_size=cfg.tile_for(use_gpu=use_gpu),
        tile_overlap=cfg.tile_overlap,
        tta=cfg.tta,
        amp=cfg.amp_flag,
        compile=cfg.compile,
        use_gpu=use_gpu,
        torch_threads=torch_threads,
        batch_size=cfg.batch_size,
        confidence_map=confidence_map,
        keep_pixels=keep_pixels,
    )


def cpu_stage_args(
    cfg: InferenceConfig, *, rows: int, batch_size: int, view: ClusterView
) -> dict[str, Any]:
    """Resources of a CPU task stage (decode; encode/write or scoring) over ``rows`` rows: a
    fixed task pool on a local Ray, Ray Data's own (growing with the nodes) on a cluster."""
    import ray

    size = resources.cpu_tasks(cfg.cpu_tasks, rows=rows, batch_size=batch_size, view=view)
    args: dict[str, Any] = {"num_cpus": cfg.decode_cpus}
    if size is not None:
        args["compute"] = ray.data.TaskPoolStrategy(size=size)
    return args


FUSED_CALLS_IN_FLIGHT = 2
"""Calls queued per fused actor: one running, one ready, so an actor never waits for the next
call and the others get blocks too (a fake multi-node test puts every block on one node)."""


@dataclass(frozen=True)
class Sink:
    """The last stage of a prediction pipeline (encode + write masks, or score): ``factory(**kwargs)``
    builds an object with ``rows(table) -> table`` (the rows of a batch of predictions) and
    ``finish(list of tables) -> table`` (called once per `batch_size` rows: e.g. one manifest
    part), both plain data so Ray can ship them."""

    factory: Callable[..., Any]
    kwargs: dict[str, Any]
    batch_size: int = 0
    """Rows per ``finish`` (per manifest part): a task of the staged path, a call of the fused;
    0 = 4 calls' worth, at least 32 (a fused call never spans blocks)."""


def run_sink(batch: pa.Table, *, sink: Sink) -> pa.Table:
    """Ray Data task UDF of the staged path: the sink's rows of one batch, finished."""
    stage = sink.factory(**sink.kwargs)
    return stage.finish([stage.rows(batch)])


class FusedPredictor:
    """Ray Data callable class of the fused path: read, decode, predict, then the sink, all in
    one actor, a chunk of ``chunk_rows`` images at a time (only one chunk's pixels in memory);
    the sink finishes each call. The same functions as the staged path, with the same forward
    passes (`Predictor.passes` of a chunk of a call's rows), so both give the same bytes."""

    def __init__(
        self,
        checkpoint: object,
        options: PredictorOptions,
        *,
        channels: int,
        endpoint_url: str | None,
        decode: DecodeOptions,
        sink: Sink,
        chunk_rows: int,
    ) -> None:
        self.predictor = Predictor(checkpoint, options)
        self.sink = sink.factory(**sink.kwargs)
        self.decode = {"channels": channels, "endpoint_url": endpoint_url, "decode": decode}
        self.chunk_rows = chunk_rows

    def __call__(self, batch: pa.Table) -> pa.Table:
        tables = []
        for start in range(0, batch.num_rows, self.chunk_rows):
            chunk = decode_images(batch.slice(start, self.chunk_rows), **self.decode)
            # The sink takes each forward pass as soon as it is done (the first mask appears
            # after one pass, not a chunk); the passes are those the predictor makes anyway.
            for rows in self.predictor.row_passes(chunk):
                tables.append(self.sink.rows(self.predictor(chunk.take(rows))))
        return self.sink.finish(tables)


def build_pipeline(
    source: list[dict[str, Any]] | Callable[[int], Any],
    *,
    cfg: InferenceConfig,
    actors: PredictorActors,
    view: ClusterView,
    checkpoint_ref: Any,
    channels: int,
    endpoint_url: str | None,
    sink: Sink,
    pixel_values: str = "uint8",
    rows: int | None = None,
    confidence_map: bool = False,
    keep_pixels: bool = False,
    image_bytes: int | None = None,
):
    """A lazy Dataset of ``source`` rows after decode, predict and ``sink``, by the planned
    ``actors``: fused into each actor (`FusedPredictor`), or staged (decode tasks -> predictor
    actors -> sink tasks).

    ``source``: a list of rows (each with an ``input`` URI), or, for ``rows`` rows that stay in
    the object store, a function of the rows per block that gives a Dataset of such blocks.
    ``image_bytes`` (decoded size of a typical input) sizes blocks, calls and the in-flight
    limit. ``pixel_values``: the model's (`unet_core.config.Preprocessing.pixel_values`), how
    every image is decoded."""
    import ray

    num_gpus, pool = actors.num_gpus, actors.pool
    predict_options = predictor_options(
        cfg,
        use_gpu=num_gpus > 0,
        torch_threads=pool.torch_threads,
        confidence_map=confidence_map,
        keep_pixels=keep_pixels,
    )
    pixels = image_bytes // channels if image_bytes else None
    call_rows = cfg.call_rows(use_gpu=num_gpus > 0, pixels=pixels)
    rows = len(source) if isinstance(source, list) else rows or 0
    block = resources.rows_per_block(
        rows=rows, rows_per_call=call_rows, image_bytes=image_bytes, actors=pool.max_size
    )
    if rows and pool.min_size > 1:  # a short input: a block for each actor started anyway
        block = min(block, math.ceil(rows / pool.min_size))
        call_rows = min(call_rows, block)
    # Never more actors waiting than blocks (Ray Data warns of a pool larger than its input).
    min_actors = min(pool.min_size, math.ceil(rows / block)) if rows else pool.min_size
    finish_rows = sink.batch_size or max(32, 4 * call_rows)
    if actors.fused:  # an actor call within a block: blocks are what spreads the work
        finish_rows = min(finish_rows, block)
    if isinstance(source, list):
        ds = ray.data.from_items(source, override_num_blocks=max(1, math.ceil(rows / block)))
    else:  # a Dataset of blocks of this size (cut by Ray tasks while the actors start)
        ds = source(block)
    # Decoding is much faster than the model: without a limit Ray Data decodes ahead until a
    # share of the whole object store is full, so memory would grow with the number of images.
    limit_mb = resources.in_flight_limit_mb(
        cfg.max_in_flight_mb,
        image_bytes=image_bytes,
        rows_per_call=call_rows,
        actors=pool.max_size,
        rows_per_block=block,
    )
    options = ds.context.execution_options  # this pipeline's own copy of the DataContext
    options.resource_limits = options.resource_limits.copy(object_store_memory=limit_mb * 2**20)
    # Block until the smallest pool is up (its nodes launched), or fail saying so: never wait
    # forever for resources that will not come.
    ds.context.wait_for_min_actors_s = max(1, math.ceil(cfg.startup_timeout))
    logger.info(
        "%s path: blocks of %d images, calls of %d, a manifest part per %d; at most %d MiB of "
        "blocks in flight in the object store",
        "fused" if actors.fused else "staged",
        block,
        call_rows,
        finish_rows,
        limit_mb,
    )
    # The decode options travel with every call: each task and actor decodes by the job's flags.
    decode_kwargs = {
        "channels": channels,
        "endpoint_url": endpoint_url,
        "decode": dataclasses.replace(cfg.decode_options, pixel_values=pixel_values),
    }
    if actors.fused:
        return ds.map_batches(
            FusedPredictor,
            fn_constructor_kwargs={
                "checkpoint": checkpoint_ref,
                "options": predict_options,
                **decode_kwargs,
                "sink": sink,
                "chunk_rows": call_rows,
            },
            # Blocks of paths weigh nothing: queue at most 2 calls per actor, or Ray Data's
            # locality rule hands every block to the actor on the node that made the blocks.
            compute=ray.data.ActorPoolStrategy(
                min_size=min_actors,
                max_size=pool.max_size,
                max_tasks_in_flight_per_actor=FUSED_CALLS_IN_FLIGHT,
            ),
            batch_format="pyarrow",
            batch_size=finish_rows,
            num_gpus=num_gpus,
            num_cpus=cfg.cpus_per_worker,
        )
    ds = ds.map_batches(
        decode_images,
        fn_kwargs=decode_kwargs,
        batch_format="pyarrow",
        batch_size=call_rows,
        **cpu_stage_args(cfg, rows=rows, batch_size=call_rows, view=view),
    )
    ds = ds.map_batches(
        Predictor,
        fn_constructor_kwargs={"checkpoint": checkpoint_ref, "options": predict_options},
        compute=ray.data.ActorPoolStrategy(min_size=min_actors, max_size=pool.max_size),
        batch_format="pyarrow",
        batch_size=call_rows,
        num_gpus=num_gpus,
        num_cpus=cfg.cpus_per_worker,
    )
    return ds.map_batches(
        run_sink,
        fn_kwargs={"sink": sink},
        batch_format="pyarrow",
        batch_size=finish_rows,
        **cpu_stage_args(cfg, rows=rows, batch_size=finish_rows, view=view),
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
