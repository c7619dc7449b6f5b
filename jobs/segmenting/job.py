"""One segmentation run, from an input prefix to masks and a manifest: what `jobs/segment.py`
calls.

The model is resolved once (an alias becomes a fixed version) and its checkpoint read on the
driver. The job takes a lease on the output (`jobs.segmenting.leases`), lists and decides the
inputs in Ray tasks (`jobs.segmenting.worklist`), streams the to-do rows through read, decode, predict and
encode/write (`jobs.inference.pipeline`, `.writer`; fused in CPU actors, staged around GPU
actors), each write batch leaving a manifest part, and finally compacts the manifest dataset
(`jobs.segmenting.manifest`). The driver's memory does not grow with the number of inputs: it
holds object references, counts and at most a few examples.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import pyarrow.compute as pc

from jobs.common import fs
from jobs.common.model_source import fetch_model
from jobs.common.path_guard import LocalPathError
from jobs.inference.config import SegmentConfig
from jobs.inference.decode import estimate_image_bytes
from jobs.inference.pipeline import Progress, Sink, build_pipeline
from jobs.inference.session import (
    PredictorActors,
    Session,
    batch_session,
    choose_predictor_actors,
    dry_run_summary,
    fetched_model_or_problem,
)
from jobs.reporting import qc_report
from jobs.segmenting import leases, manifest, tracking, worklist
from jobs.segmenting.layout import MANIFEST_DIR, MASKS_DIR, Provenance, output_settings
from jobs.segmenting.worklist import Worklist
from jobs.segmenting.writer import MaskWriter, WriterOptions, write_failed_rows
from unet_core.checkpoint import LoadedModel

logger = logging.getLogger(__name__)


class OtherVersionsError(ValueError):
    """Masks under --output were made by another model version or other settings."""

    exit_kind = "output"  # a job ends with exit code 2 (jobs.common.exits)


def _settings(cfg: SegmentConfig, actors: PredictorActors) -> str:
    return output_settings(
        mask_format=cfg.mask_format,
        tta=cfg.tta,
        tile_size=cfg.tile_for(use_gpu=actors.use_gpu),
        tile_overlap=cfg.tile_overlap,
        exif_transpose=cfg.exif_transpose,
    )


def _worklist(
    cfg: SegmentConfig,
    *,
    output: str,
    endpoint: str | None,
    ours: Provenance,
    temp_max_age: float | None,
) -> Worklist:
    return worklist.make_worklist(
        base=fs.absolute(cfg.input),
        input_list=cfg.input_list,
        output=output,
        endpoint_url=endpoint,
        ours=ours,
        temp_max_age=temp_max_age,
        overwrite=cfg.overwrite,
        redo_other=cfg.redo_other_versions,
        num_cpus=cfg.decode_cpus,
    )


def _problems(cfg: SegmentConfig, work: Worklist, output: str, ours: Provenance) -> list[str]:
    """Why the run cannot go ahead as listed (each with the fix)."""
    problems = []
    if work.total == 0:
        problems.append(
            f"no images under {cfg.input_list or cfg.input} (extensions png, jpg, jpeg, tif, "
            "tiff, bmp, any case); check --input"
        )
    if work.n(worklist.OUTSIDE):
        problems.append(
            f"{cfg.input_list}: {work.n(worklist.OUTSIDE)} entries are not under --input "
            f"{fs.absolute(cfg.input)} (e.g. {work.examples[worklist.OUTSIDE][:3]}); list paths "
            "relative to --input, or URIs under it"
        )
    if work.n(worklist.OTHER):
        found = "; ".join(f"{n} by {label}" for label, n in sorted(work.other.items()))
        problems.append(
            f"{work.n(worklist.OTHER)} inputs already have a mask under {output} made by another "
            f"model or other settings ({found}; this run: {ours.model_uri} with "
            f"{ours.settings}); to replace exactly those pass --redo-other-versions, to redo "
            "everything --overwrite, or write to a new --output"
        )
    return problems


def _dry_run(
    cfg: SegmentConfig,
    session: Session,
    actors: PredictorActors,
    *,
    output: str,
    endpoint: str | None,
) -> dict[str, Any]:
    """What a run would do: the model version, how many inputs, how many would be skipped.
    Nothing is written or removed."""
    problems: list[str] = []
    fetched = fetched_model_or_problem(cfg, problems, endpoint_url=endpoint)
    model = fetched.resolved.to_dict() if fetched else {}
    sha = fetched.sha256 if fetched else "?"
    ours = Provenance(sha, _settings(cfg, actors), model.get("model_uri") or cfg.model)
    work = None
    try:
        work = _worklist(cfg, output=output, endpoint=endpoint, ours=ours, temp_max_age=None)
        problems += _problems(cfg, work, output, ours)
    except (ValueError, OSError) as exc:
        problems.append(f"inputs: {exc}")
    return dry_run_summary(
        session,
        actors,
        **model,
        output=output,
        masks=fs.join(output, MASKS_DIR),
        inputs=work.total if work else None,
        to_process=work.n(worklist.TODO) if work else None,
        skipped=work.n(worklist.DONE) if work else None,
        rejected=work.n(worklist.REJECTED) if work else None,
        other_versions=work.other if work else None,
        problems=problems,
    )


def run_segmentation(cfg: SegmentConfig) -> dict[str, Any]:
    """Segment every input (or, with --dry-run, only list and decide); returns the summary (also the last
    stdout line of main). Local paths a multi-node cluster cannot share are refused first."""
    started = time.perf_counter()
    job_id = uuid.uuid4().hex[:12]
    endpoint = fs.s3_endpoint(cfg.s3_endpoint_url)
    output = fs.absolute(cfg.output)
    with batch_session(cfg) as session:
        if session.problems and not cfg.dry_run:
            raise LocalPathError("; ".join(session.problems))
        actors = choose_predictor_actors(cfg, session.view)
        if cfg.dry_run:
            return _dry_run(cfg, session, actors, output=output, endpoint=endpoint)
        with tracking.recorded(cfg) as record:  # the MLflow run, FAILED if this raises
            summary = _run(
                cfg,
                session,
                actors,
                started=started,
                job_id=job_id,
                output=output,
                endpoint=endpoint,
                record=record,
            )
            run_id = record.finish(summary)
        return summary if run_id is None else {**summary, "mlflow_run_id": run_id}


def _segment(
    cfg: SegmentConfig,
    work: Worklist,
    *,
    session: Session,
    actors: PredictorActors,
    checkpoint: bytes,
    loaded: LoadedModel,
    writer: WriterOptions,
    endpoint: str | None,
) -> tuple[dict[str, int], list[dict[str, str]], float, float | None]:
    """Run the pipeline over the to-do rows; (counts per status, up to 10 failures, pipeline
    seconds, seconds to the first written batch)."""
    import ray

    session.ask_for_first_nodes(actors)
    pipeline_start = time.perf_counter()
    todo = work.n(worklist.TODO)
    ds = build_pipeline(
        lambda block: worklist.dataset_of(
            work,
            worklist.TODO,
            ["input", "relative_path"],
            rows_per_block=block,
            num_cpus=cfg.decode_cpus,
        ),
        rows=todo,
        cfg=cfg,
        actors=actors,
        view=session.view,
        checkpoint_ref=ray.put(checkpoint),
        channels=loaded.preprocess.channels,
        pixel_values=loaded.preprocess.pixel_values,
        endpoint_url=endpoint,
        sink=Sink(MaskWriter, {"options": writer}, cfg.write_batch_size),
        confidence_map=cfg.confidence,
        keep_pixels=cfg.overlays,
        image_bytes=estimate_image_bytes(
            work.examples.get(worklist.TODO, [])[:3],
            channels=loaded.preprocess.channels,
            endpoint_url=endpoint,
            pixel_values=loaded.preprocess.pixel_values,
        ),
    )
    progress = Progress(total=todo, every=cfg.progress_seconds)
    counts = {manifest.OK: 0, manifest.FAILED: 0}
    failures: list[dict[str, str]] = []
    first = None
    for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        first = first or time.perf_counter() - pipeline_start
        failed = table.filter(pc.equal(table.column("status"), manifest.FAILED))
        counts[manifest.OK] += table.num_rows - failed.num_rows
        counts[manifest.FAILED] += failed.num_rows
        if len(failures) < worklist.EXAMPLES:
            failures += failed.select(["input", "error"]).slice(0, worklist.EXAMPLES).to_pylist()
        progress.update(table.num_rows, failed.num_rows)
    return counts, failures[: worklist.EXAMPLES], time.perf_counter() - pipeline_start, first


def _run(
    cfg: SegmentConfig,
    session: Session,
    actors: PredictorActors,
    *,
    started: float,
    job_id: str,
    output: str,
    endpoint: str | None,
    record: tracking.SegmentRun,
) -> dict[str, Any]:
    fetched = fetch_model(cfg.model, tracking_uri=cfg.tracking_uri, endpoint_url=endpoint)
    resolved, checkpoint, loaded = fetched.resolved, fetched.checkpoint, fetched.loaded
    sha = fetched.sha256  # loaded and checked here, before any cluster work
    logger.info(
        "model %s (%s classes: %s), checkpoint sha256 %s",
        resolved.uri_resolved,
        loaded.class_map.num_classes,
        ", ".join(loaded.class_map.names),
        sha,
    )
    settings = _settings(cfg, actors)
    ours = Provenance(sha, settings, resolved.uri_resolved or cfg.model)
    with leases.hold(
        output,
        job_id=job_id,
        provenance=ours.key,
        model_uri=ours.model_uri,
        settings=settings,
        endpoint_url=endpoint,
    ) as others:
        live = frozenset({job_id, *(lease.job_id for lease in others)})
        leases.abort_stale_uploads(output, max_age_s=cfg.temp_max_age, endpoint_url=endpoint)
        work = _worklist(
            cfg, output=output, endpoint=endpoint, ours=ours, temp_max_age=cfg.temp_max_age
        )
        problems = _problems(cfg, work, output, ours)
        if problems:
            raise (OtherVersionsError if work.n(worklist.OTHER) else ValueError)(
                "; ".join(problems)
            )
        logger.info(
            "%d inputs: %d to segment (%d made by another model or settings before), %d already "
            "done (skipped), %d rejected",
            work.total,
            work.n(worklist.TODO),
            sum(work.redone.values()),
            work.n(worklist.DONE),
            work.n(worklist.REJECTED),
        )
        record.start(fetched, actors=actors, job_id=job_id, output=output)
        writer = WriterOptions(
            output=output,
            class_map=loaded.class_map.to_dict(),
            mask_format=cfg.mask_format,
            overlays=cfg.overlays,
            confidence=cfg.confidence,
            endpoint_url=endpoint,
            model_name=resolved.name,
            model_version=resolved.version,
            model_uri=resolved.uri_resolved,
            checkpoint_sha256=sha,
            settings=settings,
            job_id=job_id,
        )
        counts, failures = {manifest.OK: 0, manifest.FAILED: 0}, []
        pipeline_seconds, first = 0.0, None
        if work.n(worklist.REJECTED):
            failures += write_failed_rows(
                worklist.dataset_of(work, worklist.REJECTED, ["input", "relative_path", "error"]),
                writer,
            )
        if work.n(worklist.TODO):
            counts, failed, pipeline_seconds, first = _segment(
                cfg,
                work,
                session=session,
                actors=actors,
                checkpoint=checkpoint,
                loaded=loaded,
                writer=writer,
                endpoint=endpoint,
            )
            failures += failed
        compacted = manifest.compact(
            output, job_id=job_id, expected_rows=work.total, endpoint_url=endpoint
        )
        manifest_uri = manifest.write_final(
            output,
            fmt=cfg.manifest_format,
            job_id=job_id,
            endpoint_url=endpoint,
        )
        report = qc_report.write_report(
            output,
            manifest_uri,
            enabled=cfg.report,
            worst=cfg.report_worst,
            run={
                **resolved.to_dict(),
                **counts,
                "skipped": work.n(worklist.DONE),
                "rejected": work.n(worklist.REJECTED),
                "pipeline_seconds": pipeline_seconds,
                "seconds": time.perf_counter() - started,
                "checkpoint_sha256": sha,
                "settings": settings,
                "job_id": job_id,
            },
            class_map=writer.class_map,
            endpoint_url=endpoint,
            job_id=job_id,
            decode=cfg.decode_options,
        )

    failed = counts[manifest.FAILED] + work.n(worklist.REJECTED)
    processed = counts[manifest.OK] + counts[manifest.FAILED]
    return {
        "total": work.total,
        "ok": counts[manifest.OK],
        "failed": failed,
        "skipped": work.n(worklist.DONE),
        "rejected": work.n(worklist.REJECTED),
        "redone_other_versions": work.redone,
        "failed_fraction": failed / work.total,
        "images_per_second": processed / pipeline_seconds if pipeline_seconds else 0.0,
        "pipeline_seconds": round(pipeline_seconds, 3),
        "seconds_to_first_mask": round(first, 3) if first is not None else None,
        "seconds": round(time.perf_counter() - started, 3),
        **resolved.to_dict(),
        "checkpoint_sha256": sha,
        "settings": settings,
        "output": output,
        "masks": fs.join(output, MASKS_DIR),
        "manifest": manifest_uri,
        "manifest_dataset": fs.join(output, MANIFEST_DIR),
        "manifest_rows": compacted["rows"],
        **report,
        "job_id": job_id,
        "shared_with": sorted(live - {job_id}),
        "failed_inputs": failures[: worklist.EXAMPLES],
    }
