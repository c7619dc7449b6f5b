"""Batch segmentation: one mask per image of a folder or bucket, with a manifest.

    python jobs/segment.py --input s3://bucket/images --output s3://bucket/masks \\
        --model models:/unet@champion --max-actors 4 --num-gpus-per-actor 1

Ray Data lists (or reads --input-list), decodes on CPU tasks, predicts in an actor pool that
loads the model once per actor, and encodes and writes masks in CPU tasks, all streamed.
Masks already present under --output are skipped (--overwrite redoes them), so a rerun after
a crash or a kill finishes the job. Progress goes to stderr; the last line of stdout is a JSON
summary. Exit code 1 when failed / total exceeds --max-failed-fraction, 2 for bad arguments.
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python jobs/segment.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa
import pyarrow.compute as pc

from jobs import fs, manifest
from jobs.batch_pipeline import (
    Progress,
    build_prediction_dataset,
    cpu_stage_args,
    init_ray,
    resolve_endpoint,
    setup_logging,
)
from jobs.image_io import estimate_image_bytes
from jobs.mask_writer import MASKS_DIR, WriterSettings, mask_key, write_batch
from jobs.model_source import (
    ModelSourceError,
    checkpoint_digest,
    fetch_checkpoint_bytes,
    resolve_model,
)
from jobs.ray_setup import quiet_ray_logs
from jobs.segment_config import SegmentConfig, parse_config
from unet_core.checkpoint import load_checkpoint

logger = logging.getLogger("jobs.segment")


# --- inputs ----------------------------------------------------------------------------------
def _read_input_list(path: str, endpoint_url: str | None) -> list[str]:
    data = fs.read_bytes(fs.absolute(path), endpoint_url=endpoint_url)
    if path.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(data))
        if "path" not in table.column_names:
            raise ValueError(
                f"{path}: a Parquet input list needs a 'path' column, found {table.column_names}"
            )
        return [str(p) for p in table.column("path").to_pylist() if p]
    lines = (line.strip() for line in data.decode("utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _relative(entry: str, base: str) -> str | None:
    """The entry's path under ``base`` (None when outside it). Accepts relative entries,
    full URIs / absolute paths under base, and scheme-less ``bucket/key`` (Ray's path column)."""
    entry = entry.replace("\\", "/")
    candidates = [base]
    if base.startswith("s3://"):
        candidates.append(base[len("s3://") :])
    if (
        fs.is_remote(entry)
        or entry.startswith("/")
        or any(entry.startswith(c + "/") for c in candidates[1:])
    ):
        for c in candidates:
            if entry.startswith(c.rstrip("/") + "/"):
                return entry[len(c.rstrip("/")) + 1 :]
        return None
    return posixpath.normpath(entry).removeprefix("./")


def list_inputs(cfg: SegmentConfig, endpoint_url: str | None) -> list[tuple[str, str]]:
    """(input URI, relative path) for every input, sorted by relative path."""
    base = fs.absolute(cfg.input)
    if cfg.input_list:
        entries = _read_input_list(cfg.input_list, endpoint_url)
        rels, outside = [], []
        for entry in entries:
            rel = _relative(entry, base)
            (outside.append(entry) if rel is None or rel.startswith("../") else rels.append(rel))
        if outside:
            raise ValueError(
                f"{cfg.input_list}: {len(outside)} entries are not under --input {base} "
                f"(e.g. {outside[:3]}); list paths relative to --input, or URIs under it"
            )
        rels = sorted(set(rels))
    else:
        rels = fs.list_images(base, endpoint_url=endpoint_url)
        out = fs.absolute(cfg.output)
        if out.startswith(base.rstrip("/") + "/"):  # outputs inside the input folder
            inner = out[len(base.rstrip("/")) + 1 :] + "/"
            rels = [r for r in rels if not r.startswith(inner)]
    return [(fs.join(base, rel), rel) for rel in rels]


@dataclass
class Plan:
    todo: list[dict[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.todo) + len(self.skipped) + len(self.rejected)


def plan(inputs: list[tuple[str, str]], existing_masks: set[str], *, overwrite: bool) -> Plan:
    """Split inputs into to-do, skipped (mask exists) and rejected (mask name taken)."""
    out = Plan()
    owner: dict[str, str] = {}
    for uri, rel in inputs:
        key = mask_key(rel)
        if key in owner:
            out.rejected.append(
                manifest.failed_row(
                    uri,
                    rel,
                    f"{uri}: its mask {MASKS_DIR}/{key} is already the mask of {owner[key]} "
                    "(same path, other extension); rename one of the two",
                )
            )
            continue
        owner[key] = rel
        if not overwrite and key in existing_masks:
            out.skipped.append((uri, rel))
        else:
            out.todo.append({"input": uri, "relative_path": rel})
    return out


def existing_mask_keys(output: str, endpoint_url: str | None) -> set[str]:
    """Masks fully written under <output>/masks (temporary files are hidden and not counted)."""
    return {
        rel
        for rel in fs.list_files(fs.join(output, MASKS_DIR), endpoint_url=endpoint_url)
        if rel.endswith(".png") and not any(p.startswith(".") for p in rel.split("/"))
    }


# --- the job ---------------------------------------------------------------------------------
def _stream(ds: Any, progress: Progress) -> Iterator[pa.Table]:
    """Manifest rows of each written batch, as they complete (nothing else is collected)."""
    for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        failed = sum(1 for s in table.column("status").to_pylist() if s == manifest.FAILED)
        progress.update(table.num_rows, failed)
        yield table


def run_segmentation(cfg: SegmentConfig) -> dict[str, Any]:
    """Segment every input; returns the summary (also the last stdout line of main)."""
    started = time.perf_counter()
    job_id = uuid.uuid4().hex[:12]
    endpoint = resolve_endpoint(cfg)
    output = fs.absolute(cfg.output)

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
    work = plan(inputs, existing, overwrite=cfg.overwrite)
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
        import ray

        started_ray = init_ray(cfg)
        quiet_ray_logs(cfg.log_level)  # our progress lines replace Ray Data's bars
        pipeline_start = time.perf_counter()
        writer = WriterSettings(
            output=output,
            class_map=class_map.to_dict(),
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
            **cpu_stage_args(cfg, rows=len(work.todo), batch_size=cfg.write_batch_size),
        )
        progress = Progress(total=len(work.todo), every=cfg.progress_seconds)
        try:
            tables.extend(_stream(ds, progress))
            pipeline_seconds = time.perf_counter() - pipeline_start
        finally:
            if started_ray:
                ray.shutdown()

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
    tables.append(manifest.rows_to_table(extra, class_map.names))
    schema = manifest.schema(class_map.names)
    table = pa.concat_tables([t.select(schema.names).cast(schema) for t in tables])
    table = table.sort_by("relative_path")
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


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(
        SegmentConfig,
        argv,
        prog="jobs/segment.py",
        description=__doc__.split("\n\n")[0] + " " + __doc__.split("\n\n")[2].replace("\n", " "),
    )
    setup_logging(cfg.log_level)
    try:
        summary = run_segmentation(cfg)
    except (ModelSourceError, ValueError, FileNotFoundError, NotADirectoryError) as exc:
        logger.error("%s", exc)
        print(json.dumps({"error": str(exc)}), flush=True)
        return 2
    logger.info(
        "done: %d total, %d ok, %d failed, %d skipped in %.1f s (%.2f images/s); manifest %s",
        summary["total"],
        summary["ok"],
        summary["failed"],
        summary["skipped"],
        summary["seconds"],
        summary["images_per_second"],
        summary["manifest"],
    )
    too_many = summary["failed"] > 0 and summary["failed_fraction"] > cfg.max_failed_fraction
    if too_many:
        logger.error(
            "%d of %d inputs failed (%.1f%% > --max-failed-fraction %.1f%%); see %s",
            summary["failed"],
            summary["total"],
            100 * summary["failed_fraction"],
            100 * cfg.max_failed_fraction,
            summary["manifest"],
        )
    sys.stdout.flush()
    print(json.dumps(summary), flush=True)
    return 1 if too_many else 0


if __name__ == "__main__":
    sys.exit(main())
