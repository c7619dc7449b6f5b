"""One segmentation run, from an input prefix to masks and a manifest: what `jobs/segment.py`
calls.

The model is resolved once (an alias becomes a fixed version) and its checkpoint read on the
driver; inputs are listed and planned (`jobs.inference.inputs`); the to-do rows stream through
decode tasks, predictor actors and encode/write tasks (`jobs.inference.pipeline`, `.writer`),
each write task leaving a manifest part; the final manifest holds a row for every input.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from jobs.common import fs
from jobs.common.path_guard import LocalPathError
from jobs.inference import manifest
from jobs.inference.config import SegmentConfig
from jobs.inference.decode import estimate_image_bytes
from jobs.inference.inputs import Plan, existing_mask_keys, list_inputs, plan_inputs
from jobs.inference.launch import (
    ActorPlan,
    Session,
    batch_session,
    dry_run_report,
    plan_actors,
    resolved_model_or_problem,
)
from jobs.inference.model_source import (
    ResolvedModel,
    checkpoint_digest,
    fetch_checkpoint_bytes,
    resolve_model,
)
from jobs.inference.pipeline import Progress, build_prediction_dataset, cpu_stage_args
from jobs.inference.writer import MASKS_DIR, WriterSettings, mask_key, write_batch
from unet_core.checkpoint import LoadedModel, load_checkpoint

logger = logging.getLogger("jobs.segment")


def _stream(ds: Any, progress: Progress) -> Iterator[pa.Table]:
    """Manifest rows of each written batch, as they complete (nothing else is collected)."""
    for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        failed = sum(1 for s in table.column("status").to_pylist() if s == manifest.FAILED)
        progress.update(table.num_rows, failed)
        yield table


def _segment(
    cfg: SegmentConfig,
    work: Plan,
    *,
    session: Session,
    actors: ActorPlan,
    checkpoint: bytes,
    loaded: LoadedModel,
    resolved: ResolvedModel,
    output: str,
    endpoint: str | None,
    job_id: str,
) -> tuple[list[pa.Table], float]:
    """Run the pipeline over the to-do rows; (manifest tables, pipeline seconds)."""
    import ray

    session.ask_for_first_nodes(actors)
    pipeline_start = time.perf_counter()
    writer = WriterSettings(
        output=output,
        class_map=loaded.class_map.to_dict(),
        mask_format=cfg.mask_format,
        overlays=cfg.overlays,
        confidence=cfg.confidence,
        endpoint_url=endpoint,
        model_name=resolved.name,
        model_version=resolved.version,
        model_uri=resolved.uri_resolved,
        job_id=job_id,
    )
    ds = build_prediction_dataset(
        work.todo,
        cfg=cfg,
        actors=actors,
        view=session.view,
        checkpoint_ref=ray.put(checkpoint),
        channels=loaded.preprocess.channels,
        endpoint_url=endpoint,
        confidence_map=cfg.confidence,
        keep_pixels=cfg.overlays,
        image_bytes=estimate_image_bytes(
            [r["input"] for r in work.todo[:3]],
            channels=loaded.preprocess.channels,
            endpoint_url=endpoint,
        ),
    )
    ds = ds.map_batches(
        write_batch,
        fn_kwargs={"settings": writer},
        batch_format="pyarrow",
        batch_size=cfg.write_batch_size,
        **cpu_stage_args(
            cfg, rows=len(work.todo), batch_size=cfg.write_batch_size, view=session.view
        ),
    )
    progress = Progress(total=len(work.todo), every=cfg.progress_seconds)
    tables = list(_stream(ds, progress))
    return tables, time.perf_counter() - pipeline_start


def _manifest_table(
    tables: list[pa.Table],
    work: Plan,
    *,
    output: str,
    endpoint: str | None,
    class_names: list[str],
    resolved: ResolvedModel,
    job_id: str,
) -> pa.Table:
    """This run's rows plus a ``skipped`` row per skipped input (with what the earlier run's
    manifest parts recorded about it) and a ``failed`` row per rejected input."""
    previous = (
        manifest.read_parts(output, inputs={u for u, _ in work.skipped}, endpoint_url=endpoint)
        if work.skipped
        else {}
    )
    extra = [
        manifest.skipped_row(u, r, fs.join(output, MASKS_DIR, mask_key(r)), previous.get(u), job_id)
        for u, r in work.skipped
    ]
    extra += [
        {**row, "job_id": job_id, "model_uri": resolved.uri_resolved} for row in work.rejected
    ]
    tables = [*tables, manifest.rows_to_table(extra, class_names)]
    schema = manifest.schema(class_names)
    table = pa.concat_tables([t.select(schema.names).cast(schema) for t in tables])
    return table.sort_by("relative_path")


def _dry_run(
    cfg: SegmentConfig, session: Session, actors: ActorPlan, *, output: str, endpoint: str | None
) -> dict[str, Any]:
    """What a run would do: the model version, how many inputs, how many would be skipped."""
    problems: list[str] = []
    model = resolved_model_or_problem(cfg, problems)
    work = None
    try:
        inputs = list_inputs(cfg, endpoint)
        if not inputs:
            problems.append(f"no images under {cfg.input_list or cfg.input}")
        existing = set() if cfg.overwrite else existing_mask_keys(output, endpoint)
        work = plan_inputs(inputs, existing, overwrite=cfg.overwrite)
    except (ValueError, OSError) as exc:
        problems.append(f"inputs: {exc}")
    return dry_run_report(
        session,
        actors,
        **model,
        output=output,
        masks=fs.join(output, MASKS_DIR),
        inputs=work.total if work else None,
        to_process=len(work.todo) if work else None,
        skipped=len(work.skipped) if work else None,
        rejected=len(work.rejected) if work else None,
        problems=problems,
    )


def run_segmentation(cfg: SegmentConfig) -> dict[str, Any]:
    """Segment every input (or, with --dry-run, only plan); returns the summary (also the last
    stdout line of main). Local paths a multi-node cluster cannot share are refused first."""
    started = time.perf_counter()
    job_id = uuid.uuid4().hex[:12]
    endpoint = fs.s3_endpoint(cfg.s3_endpoint_url)
    output = fs.absolute(cfg.output)
    with batch_session(cfg) as session:
        if session.problems and not cfg.dry_run:
            raise LocalPathError("; ".join(session.problems))
        actors = plan_actors(cfg, session.view)
        if cfg.dry_run:
            return _dry_run(cfg, session, actors, output=output, endpoint=endpoint)
        return _run(
            cfg, session, actors, started=started, job_id=job_id, output=output, endpoint=endpoint
        )


def _run(
    cfg: SegmentConfig,
    session: Session,
    actors: ActorPlan,
    *,
    started: float,
    job_id: str,
    output: str,
    endpoint: str | None,
) -> dict[str, Any]:
    resolved = resolve_model(cfg.model, tracking_uri=cfg.tracking_uri)
    checkpoint = fetch_checkpoint_bytes(
        resolved, tracking_uri=cfg.tracking_uri, endpoint_url=endpoint
    )
    loaded = load_checkpoint(checkpoint)  # validated here, before any cluster work
    class_map = loaded.class_map
    logger.info(
        "model %s (%s classes: %s), checkpoint sha256 %s",
        resolved.uri_resolved,
        class_map.num_classes,
        ", ".join(class_map.names),
        checkpoint_digest(checkpoint),
    )

    inputs = list_inputs(cfg, endpoint)
    if not inputs:
        raise ValueError(
            f"no images under {cfg.input_list or cfg.input} (extensions png, jpg, jpeg, tif, "
            "tiff, bmp, any case); check --input"
        )
    manifest.cleanup_temporary_files(output, endpoint_url=endpoint)
    existing = set() if cfg.overwrite else existing_mask_keys(output, endpoint)
    work = plan_inputs(inputs, existing, overwrite=cfg.overwrite)
    logger.info(
        "%d inputs: %d to segment, %d already done (skipped), %d rejected",
        work.total,
        len(work.todo),
        len(work.skipped),
        len(work.rejected),
    )

    tables: list[pa.Table] = []
    pipeline_seconds = 0.0
    if work.todo:
        tables, pipeline_seconds = _segment(
            cfg,
            work,
            session=session,
            actors=actors,
            checkpoint=checkpoint,
            loaded=loaded,
            resolved=resolved,
            output=output,
            endpoint=endpoint,
            job_id=job_id,
        )
    table = _manifest_table(
        tables,
        work,
        output=output,
        endpoint=endpoint,
        class_names=class_map.names,
        resolved=resolved,
        job_id=job_id,
    )
    manifest_uri = manifest.write_final(
        output, table, fmt=cfg.manifest_format, endpoint_url=endpoint
    )

    statuses = table.column("status").to_pylist()
    counts = {s: statuses.count(s) for s in (manifest.OK, manifest.FAILED, manifest.SKIPPED)}
    processed = counts[manifest.OK] + counts[manifest.FAILED] - len(work.rejected)
    failed_inputs = [
        {"input": r["input"], "error": r["error"]}
        for r in table.filter(pc.equal(table.column("status"), manifest.FAILED))
        .select(["input", "error"])
        .slice(0, 10)
        .to_pylist()
    ]
    return {
        "total": work.total,
        "ok": counts[manifest.OK],
        "failed": counts[manifest.FAILED],
        "skipped": counts[manifest.SKIPPED],
        "failed_fraction": counts[manifest.FAILED] / work.total,
        "images_per_second": processed / pipeline_seconds if pipeline_seconds else 0.0,
        "pipeline_seconds": round(pipeline_seconds, 3),
        "seconds": round(time.perf_counter() - started, 3),
        **resolved.to_dict(),
        "checkpoint_sha256": checkpoint_digest(checkpoint),
        "output": output,
        "masks": fs.join(output, MASKS_DIR),
        "manifest": manifest_uri,
        "job_id": job_id,
        "failed_inputs": failed_inputs,
    }
