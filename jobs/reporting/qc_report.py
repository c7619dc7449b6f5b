"""The QC report of a segmentation output: ``<output>/report.html`` and its PNGs under
``<output>/report/`` (`build_report`), written at the end of a segment run (`write_report`)
or by ``unet-report`` over an existing output (`jobs.reporting.job`).

The figures come from the final manifest (``manifest.parquet`` or ``.jsonl``), read back in
batches, so the page counts every input of the output, not only the last run's: counts by
status, the failures with their errors, a histogram of each class's predicted pixel fraction
and one of the mean confidence, the lowest-confidence images as image | mask | overlay
thumbnails, and the run's throughput and model version (the segment run's own figures, or,
for a report made alone, the last job's as its manifest rows record them). Memory stays flat
however many rows the manifest holds (fixed-bin histograms, at most ``worst`` and
`MAX_FAILURES` rows kept).

Every asset is named by a digest of its bytes and written before the page, which replaces the
old one atomically: a reader sees the old report or the new one, whole. Assets no page names
any more are removed once older than `STALE_ASSET_S` (another job sharing the output may be
writing a page that names them).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import json
import logging
import posixpath
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image

from jobs.common import fs
from jobs.reporting import qc_page
from jobs.segmenting import manifest
from jobs.segmenting.layout import (
    ASSETS_DIR,
    REPORT_NAME,
    is_temporary,
    parse_settings,
    run_settings,
)

logger = logging.getLogger(__name__)

BINS = np.linspace(0.0, 1.0, 21)
"""Histogram bin edges: fractions and confidences are in [0, 1]."""
MAX_FAILURES = 200
"""Failures listed on the page (the count covers all of them)."""
THUMB_SIDE = 200
"""Longest side of a thumbnail in pixels (smaller images are kept as they are)."""
STALE_ASSET_S = 3600.0
BATCH_ROWS = 65_536
JOB_KEYS = ["job_id", "model_uri", "model_name", "model_version", "checkpoint_sha256", "settings"]
"""What the manifest records of the job that wrote a row."""
COLUMNS = ["input", "relative_path", "output", "status", "error", "class_fractions",
           "mean_confidence", *JOB_KEYS, "finished_at"]  # fmt: skip


def is_on(report: bool | None, output: str) -> bool:
    """--report as given; by default on for local outputs, off for s3:// ones."""
    return report if report is not None else not fs.is_remote(output)


@dataclass
class ManifestStats:
    """What the page shows of the manifest, accumulated batch by batch."""

    worst_n: int = 12
    rows: int = 0
    status: dict[str, int] = field(default_factory=dict)
    models: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    conf_hist: np.ndarray = field(default_factory=lambda: np.zeros(len(BINS) - 1, np.int64))
    conf_sum: float = 0.0
    conf_n: int = 0
    class_hist: dict[str, np.ndarray] = field(default_factory=dict)
    class_sum: dict[str, float] = field(default_factory=dict)
    class_present: dict[str, int] = field(default_factory=dict)
    class_n: int = 0
    worst: list[dict[str, Any]] = field(default_factory=list)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per job id: its rows, `JOB_KEYS` and its first and last finish time."""

    def add(self, table: pa.Table) -> None:
        self.rows += table.num_rows
        self._add_jobs(table)
        for item in table.column("status").value_counts().to_pylist():
            self.status[item["values"]] = self.status.get(item["values"], 0) + item["counts"]
        keys = ["model_uri", "model_version"]
        by_model = {(m["model_uri"], m["model_version"]): m for m in self.models}
        for m in table.group_by(keys).aggregate([("status", "count")]).to_pylist():
            got = by_model.setdefault(
                (m["model_uri"], m["model_version"]), {**{k: m[k] for k in keys}, "rows": 0}
            )
            got["rows"] += m["status_count"]
        self.models = sorted(by_model.values(), key=lambda m: (-m["rows"], str(m["model_uri"])))
        failed = table.filter(pc.equal(table.column("status"), manifest.FAILED))
        room = MAX_FAILURES - len(self.failures)
        if room > 0 and failed.num_rows:
            self.failures += failed.select(["relative_path", "error"]).slice(0, room).to_pylist()
        ok = table.filter(pc.equal(table.column("status"), manifest.OK))
        if ok.num_rows:
            self._add_ok(ok)

    def _add_jobs(self, table: pa.Table) -> None:
        spans = [("finished_at", "min"), ("finished_at", "max"), ("status", "count")]
        for g in table.group_by(JOB_KEYS).aggregate(spans).to_pylist():
            new = {**{k: g[k] for k in JOB_KEYS}, "rows": 0, "first": None, "last": None}
            new["settings"] = run_settings(new["settings"])  # a row's own tiling aside
            job = self.jobs.setdefault(g["job_id"] or "", new)
            job["rows"] += g["status_count"]
            first, last = g["finished_at_min"], g["finished_at_max"]
            if first is not None:
                job["first"] = first if job["first"] is None else min(job["first"], first)
                job["last"] = last if job["last"] is None else max(job["last"], last)

    def last_job(self) -> dict[str, Any]:
        """What the manifest says of the run a report made alone stands for: the job whose
        rows finished last (its rows per second between its first and last finish time), with
        ``source: manifest``; the run's other figures are not recorded there."""
        done = [j for j in self.jobs.values() if j.get("last")]
        if not done:
            return {"source": "manifest"}
        job = max(done, key=lambda j: j["last"])
        span = (job["last"] - job["first"]).total_seconds()
        return {
            "source": "manifest",
            **{k: job[k] for k in JOB_KEYS},
            "processed": job["rows"],
            "images_per_second": job["rows"] / span if span > 0 else 0.0,
        }

    def _add_ok(self, ok: pa.Table) -> None:
        conf = ok.column("mean_confidence").to_numpy().astype(np.float64)  # null -> nan
        finite = np.isfinite(conf)
        self.conf_hist += np.histogram(np.clip(conf[finite], 0, 1), BINS)[0]
        self.conf_sum += float(conf[finite].sum())
        self.conf_n += int(finite.sum())
        fractions = ok.column("class_fractions").combine_chunks()
        if isinstance(fractions.type, pa.StructType) and fractions.type.num_fields:
            self.class_n += ok.num_rows
            for i, child in enumerate(fractions.flatten()):
                name = fractions.type.field(i).name
                values = child.to_numpy(zero_copy_only=False).astype(np.float64)
                values = np.nan_to_num(values, nan=0.0)  # a class another model lacked
                hist = self.class_hist.setdefault(name, np.zeros(len(BINS) - 1, np.int64))
                hist += np.histogram(np.clip(values, 0, 1), BINS)[0]
                self.class_sum[name] = self.class_sum.get(name, 0.0) + float(values.sum())
                self.class_present[name] = self.class_present.get(name, 0) + int((values > 0).sum())
        if self.worst_n and finite.any():
            idx = np.flatnonzero(finite)
            idx = idx[np.argsort(conf[idx], kind="stable")[: self.worst_n]]
            cols = ["input", "relative_path", "output", "mean_confidence", "settings"]
            rows = ok.select(cols).take(pa.array(idx)).to_pylist()
            merged = sorted(
                [*self.worst, *rows], key=lambda r: (r["mean_confidence"], r["relative_path"])
            )
            self.worst = merged[: self.worst_n]


def manifest_batches(uri: str, *, endpoint_url: str | None = None) -> Iterator[pa.Table]:
    """The final manifest (``.parquet`` or ``.jsonl``) in tables of up to `BATCH_ROWS` rows
    with `COLUMNS` (missing ones null)."""
    filesystem, path = fs.resolve(uri, endpoint_url=endpoint_url)
    if uri.endswith(".parquet"):
        with filesystem.open_input_file(path) as f:
            parquet = pq.ParquetFile(f)
            have = [c for c in COLUMNS if c in parquet.schema_arrow.names]
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=have):
                yield _with_columns(pa.Table.from_batches([batch]))
        return
    with filesystem.open_input_stream(path) as f:
        lines = io.TextIOWrapper(f, encoding="utf-8")
        rows: list[dict[str, Any]] = []
        for line in lines:
            if line.strip():
                rows.append(json.loads(line))
            if len(rows) == BATCH_ROWS:
                yield _jsonl_table(rows)
                rows = []
        if rows:
            yield _jsonl_table(rows)


def _jsonl_table(rows: list[dict[str, Any]]) -> pa.Table:
    names = sorted({k for r in rows for k in (r.get("class_fractions") or {})})
    sch = pa.schema([manifest.schema(names).field(c) for c in COLUMNS])
    for r in rows:
        if r.get("finished_at"):
            r["finished_at"] = dt.datetime.fromisoformat(r["finished_at"])
    return pa.Table.from_pylist([{c: r.get(c) for c in COLUMNS} for r in rows], schema=sch)


def _with_columns(table: pa.Table) -> pa.Table:
    for name in COLUMNS:
        if name not in table.column_names:
            f = manifest.schema([]).field(name)
            table = table.append_column(f, pa.nulls(table.num_rows, f.type))
    return table.select(COLUMNS)


# --- thumbnails ---------------------------------------------------------------------------


def _mask_indices(data: bytes, mask_format: str, class_map: Any, source: str) -> np.ndarray:
    """A written mask back to class indices (its format is in the row's settings)."""
    from unet_core.data import decode_mask

    if mask_format == "values":
        return decode_mask(data, class_map, source=source)
    with Image.open(io.BytesIO(data)) as img:  # indices, or a palette PNG of indices
        return np.asarray(img).astype(np.uint8)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _thumbnails(
    row: Mapping[str, Any], class_map: Any, endpoint_url: str | None, decode: Any = None
) -> dict:
    """PNG bytes of the image, the coloured mask and the overlay of one manifest row, at most
    `THUMB_SIDE` pixels on a side (both shrunk before blending: a huge image costs little)."""
    from unet_core.image_decode import decode_for_display
    from unet_core.image_files import DEFAULT_OPTIONS
    from unet_core.viz import colorize_mask, overlay

    image = decode_for_display(  # with the job's decode options, as its mask was made
        fs.read_bytes(row["input"], endpoint_url=endpoint_url),
        source=row["input"],
        options=decode or DEFAULT_OPTIONS,
    )
    mask = _mask_indices(
        fs.read_bytes(row["output"], endpoint_url=endpoint_url),
        parse_settings(row.get("settings")).get("mask_format", "indices"),
        class_map,
        row["output"],
    )
    if mask.shape != image.shape[:2]:
        raise ValueError(
            f"{row['output']}: mask {mask.shape} does not match its image {image.shape[:2]}"
        )
    h, w = mask.shape
    scale = min(1.0, THUMB_SIDE / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if scale < 1.0:  # (h, w) -> (size[1], size[0])
        image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
        mask = np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST))
    return {
        "image": _png(image),
        "mask": _png(colorize_mask(mask, class_map.colors)),
        "overlay": _png(overlay(image, mask, class_map.colors, alpha=0.5)),
    }


# --- writing --------------------------------------------------------------------------------


class _Assets:
    """PNG files under report/, each named by its bytes' digest; relative links for the page."""

    def __init__(self, output: str, endpoint_url: str | None, job_id: str) -> None:
        self.filesystem, self.root = fs.resolve(output, endpoint_url=endpoint_url)
        self.job_id = job_id
        self.names: set[str] = set()

    def put(self, kind: str, data: bytes) -> str:
        name = f"{kind}-{hashlib.sha1(data).hexdigest()[:16]}.png"
        if name not in self.names:
            path = posixpath.join(self.root, ASSETS_DIR, name)
            _write(self.filesystem, path, data, "image/png", self.job_id)
            self.names.add(name)
        return f"{ASSETS_DIR}/{name}"

    def remove_stale(self) -> None:
        selector = pafs.FileSelector(posixpath.join(self.root, ASSETS_DIR), allow_not_found=True)
        now = time.time()
        for info in self.filesystem.get_file_info(selector):
            name = posixpath.basename(info.path)
            age = now - info.mtime.timestamp() if info.mtime else 0.0
            if info.type != pafs.FileType.File or name in self.names or is_temporary(name):
                continue
            if name.endswith(".png") and age > STALE_ASSET_S:
                with contextlib.suppress(OSError):  # removed by another job meanwhile
                    self.filesystem.delete_file(info.path)


def _write(filesystem: pafs.FileSystem, path: str, data: bytes, ctype: str, job_id: str) -> None:
    """Atomic write; on S3 with a Content-Type, so a browser shows the page instead of
    downloading it."""
    if isinstance(filesystem, pafs.LocalFileSystem):
        fs.write_bytes_atomic(filesystem, path, data, owner=job_id)
        return
    with filesystem.open_output_stream(path, metadata={"Content-Type": ctype}) as f:
        f.write(data)


def build_report(
    output: str,
    manifest_uri: str,
    *,
    run: Mapping[str, Any] | None,
    class_map: dict[str, Any] | Callable[[ManifestStats], dict[str, Any]],
    worst: int = 12,
    endpoint_url: str | None = None,
    job_id: str = "",
    decode: Any = None,
) -> dict[str, Any]:
    """Read the manifest, write the assets and then the page; returns the page's URI and the
    counts it shows (what a Ray task hands back). ``run``: the segment run's figures, or None
    for a report made alone (the last job's, from the manifest: `ManifestStats.last_job`).
    ``class_map``: `ClassMap.to_dict()` of the model, or a function that finds it from the
    manifest's figures (a report made alone: the last job's model's). ``decode``: the job's
    `unet_core.image_files.DecodeOptions` (None: the defaults)."""
    from unet_core.classes import ClassMap

    stats = ManifestStats(worst_n=worst)
    for table in manifest_batches(manifest_uri, endpoint_url=endpoint_url):
        stats.add(table)
    colours = ClassMap.from_dict(class_map if isinstance(class_map, dict) else class_map(stats))
    assets = _Assets(output, endpoint_url, job_id)
    charts = {}
    if stats.conf_n:
        png = qc_page.histogram_png(stats.conf_hist, BINS, xlabel="mean confidence")
        charts["confidence"] = assets.put("confidence", png)
    if stats.class_hist:
        charts["classes"] = assets.put(
            "classes", qc_page.class_histograms_png(stats.class_hist, BINS)
        )
    thumbs = []
    for row in stats.worst:
        shown = {k: row[k] for k in ("relative_path", "mean_confidence")}
        try:
            pngs = _thumbnails(row, colours, endpoint_url, decode)
            shown.update({kind: assets.put(kind, data) for kind, data in pngs.items()})
        except Exception as exc:  # a moved or unreadable file costs its thumbnails only
            shown["error"] = f"no thumbnails: {type(exc).__name__}: {exc}"
            logger.warning("report: %s", shown["error"])
        thumbs.append(shown)
    facts = stats.last_job() if run is None else run
    page = qc_page.render(
        output=output, manifest_uri=manifest_uri, stats=stats, run=facts, assets=charts,
        thumbs=thumbs,
    )  # fmt: skip
    path = posixpath.join(assets.root, REPORT_NAME)
    _write(assets.filesystem, path, page.encode("utf-8"), "text/html; charset=utf-8", job_id)
    assets.remove_stale()
    return {
        "report": fs.join(output, REPORT_NAME),
        "rows": stats.rows,
        "status": stats.status,
        "run": {k: v for k, v in facts.items() if k != "source"},
    }


def write_report(
    output: str,
    manifest_uri: str,
    *,
    enabled: bool | None,
    run: Mapping[str, Any],
    **kwargs: Any,
) -> dict[str, Any]:
    """The end of a segment run: `build_report` in a Ray task (the driver reads no rows) when
    --report is on (`is_on`). Returns ``{"report": URI or None}`` for the summary; a report
    that fails is logged and adds ``report_error``: the masks and manifest stand."""
    if not is_on(enabled, output):
        return {"report": None}
    import ray

    processed = run.get("ok", 0) + run.get("failed", 0)
    seconds = run.get("pipeline_seconds") or 0.0
    facts = {
        **run,
        "processed": processed,
        "images_per_second": processed / seconds if seconds else 0.0,
    }
    task = ray.remote(build_report).options(num_cpus=0.5)
    try:
        done = ray.get(task.remote(output, manifest_uri, run=facts, **kwargs))
    except Exception as exc:  # any failure of the page is reported, not raised
        logger.exception("the QC report of %s failed", output)
        return {"report": None, "report_error": f"{type(exc).__name__}: {exc}"}
    logger.info("QC report %s (%d manifest rows)", done["report"], done["rows"])
    return {"report": done["report"]}
