"""The QC report of an existing segment output, made from its manifest alone: what
`jobs/report.py` (``unet-report``) calls. It reads ``manifest.parquet`` (or ``.jsonl``) in
this process, streamed in batches (no Ray, no prediction), and writes ``report.html`` and
``report/`` through `jobs.reporting.qc_report.build_report`, the function ``segment --report``
runs at the end of its run.
"""

from __future__ import annotations

import logging
import posixpath
import uuid
from typing import Any

import pyarrow.fs as pafs

from jobs.common import fs
from jobs.reporting import qc_report
from jobs.reporting.config import ReportConfig
from jobs.segmenting.layout import MANIFEST_FORMATS, final_manifest

logger = logging.getLogger(__name__)


class ReportInputError(ValueError):
    """The output, its manifest or the class map cannot be read; the message says what to pass."""

    exit_kind = "input"  # a job ends with exit code 2 (jobs.common.exits)


def find_manifest(output: str, *, endpoint_url: str | None) -> str:
    """The URI of the output's final manifest (the newer of manifest.parquet and .jsonl)."""
    filesystem, root = fs.resolve(output, endpoint_url=endpoint_url)
    found = []
    for fmt in MANIFEST_FORMATS:
        info = filesystem.get_file_info(posixpath.join(root, final_manifest(fmt)))
        if info.type == pafs.FileType.File:
            found.append((info.mtime.timestamp() if info.mtime else 0.0, fmt))
    if found:
        return fs.join(output, final_manifest(max(found)[1]))
    if filesystem.get_file_info(root).type == pafs.FileType.NotFound:
        raise ReportInputError(
            f"--output {output}: no such folder or prefix; give the --output of a segment run"
        )
    raise ReportInputError(
        f"{output}: no manifest.parquet or manifest.jsonl (a segment run writes one at its end); "
        f"give the --output of a finished segment run, or run jobs/segment.py --output {output}"
    )


def read_class_map(cfg: ReportConfig, stats: qc_report.ManifestStats, endpoint: str | None):
    """`ClassMap.to_dict()` from --class-map, else of the model that made the last job's
    masks (the manifest's model_uri)."""
    from unet_core.classes import ClassMap

    if cfg.class_map:
        try:
            text = fs.read_bytes(fs.absolute(cfg.class_map), endpoint_url=endpoint).decode()
        except OSError as exc:
            raise ReportInputError(f"--class-map {cfg.class_map}: cannot read it ({exc})") from exc
        return ClassMap.from_json(text, source=cfg.class_map).to_dict()
    from jobs.common.model_source import ModelSourceError, fetch_model

    model = stats.last_job().get("model_uri")
    if not model:
        raise ReportInputError(
            f"{cfg.output}: the manifest names no model; pass --class-map FILE (the model's "
            "classes.json)"
        )
    try:
        fetched = fetch_model(model, tracking_uri=cfg.tracking_uri, endpoint_url=endpoint)
    except ModelSourceError as exc:
        raise ReportInputError(
            f"the class map of {model} (the model of the output's last job): {exc}; pass "
            "--class-map FILE (the model's classes.json), or --tracking-uri for a models:/ URI"
        ) from exc
    return fetched.loaded.class_map.to_dict()


def run_report(cfg: ReportConfig) -> dict[str, Any]:
    """Write the report of ``cfg.output``; the summary (``report`` URI, ``rows``, counts per
    ``status``, the last job's figures as ``run``, the ``manifest`` read)."""
    endpoint = fs.s3_endpoint(cfg.s3_endpoint_url)
    output = fs.absolute(cfg.output)
    manifest_uri = find_manifest(output, endpoint_url=endpoint)
    logger.info("reading %s", manifest_uri)
    done = qc_report.build_report(
        output,
        manifest_uri,
        run=None,
        class_map=lambda stats: read_class_map(cfg, stats, endpoint),
        worst=cfg.report_worst,
        endpoint_url=endpoint,
        job_id=uuid.uuid4().hex[:12],
        decode=cfg.decode_options,
    )
    logger.info("QC report %s (%d manifest rows)", done["report"], done["rows"])
    return {**done, "output": output, "manifest": manifest_uri}
