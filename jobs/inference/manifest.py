"""The segmentation manifest: one row per input, written so that kills and reruns behave.

While the job runs, each write task stores the rows of its batch as a part file
``<output>/manifest/part-<hash of the batch's inputs>.parquet`` (atomic; a retried batch
replaces its own part). At the end the driver writes ``<output>/manifest.parquet`` (or
``.jsonl``) with a row for EVERY input of the run: ``ok`` and ``failed`` rows from this run,
``skipped`` rows for inputs whose mask already existed, carrying what the part files of earlier
runs recorded about them (size, class fractions, model version).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import posixpath
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from jobs.common import fs

logger = logging.getLogger(__name__)

OK, FAILED, SKIPPED = "ok", "failed", "skipped"
MANIFEST_DIR = "manifest"
PART_PREFIX = "part-"


def schema(class_names: Sequence[str]) -> pa.Schema:
    """Manifest columns; ``class_fractions`` is a struct with one field per class name."""
    return pa.schema(
        [
            pa.field("input", pa.string()),  # full URI or absolute path of the image
            pa.field("relative_path", pa.string()),  # path under --input (the key)
            pa.field("output", pa.string()),  # mask URI (null when failed)
            pa.field("status", pa.string()),  # ok | failed | skipped
            pa.field("error", pa.string()),
            pa.field("width", pa.int32()),
            pa.field("height", pa.int32()),
            pa.field("class_fractions", pa.struct([(n, pa.float64()) for n in class_names])),
            pa.field("mean_confidence", pa.float64()),
            pa.field("model_name", pa.string()),
            pa.field("model_version", pa.string()),
            pa.field("model_uri", pa.string()),
            pa.field("seconds", pa.float64()),  # read + decode + predict share + encode + write
            pa.field("job_id", pa.string()),  # the run that produced the row
            pa.field("predicted_on", pa.string()),  # Ray node id of the predictor actor
            pa.field("finished_at", pa.timestamp("ms", tz="UTC")),
        ]
    )


FIELDS = schema([]).names


def base_row(**values: Any) -> dict[str, Any]:
    """A row with every field present (None unless given), stamped with the current time."""
    row: dict[str, Any] = dict.fromkeys(FIELDS)
    row["finished_at"] = dt.datetime.now(dt.timezone.utc)
    row.update(values)
    return row


def rows_to_table(rows: Sequence[dict[str, Any]], class_names: Sequence[str]) -> pa.Table:
    """Rows (dicts with FIELDS) -> an Arrow table of the manifest schema."""
    sch = schema(class_names)
    names = set(class_names)
    cleaned = []
    for row in rows:
        fractions = row.get("class_fractions")
        if isinstance(fractions, dict) and not set(fractions) <= names:
            fractions = {
                k: v for k, v in fractions.items() if k in names
            }  # another model's classes
        cleaned.append({**{k: row.get(k) for k in FIELDS}, "class_fractions": fractions})
    return pa.Table.from_pylist(cleaned, schema=sch)


def part_name(inputs: Iterable[str]) -> str:
    digest = hashlib.sha1("\n".join(sorted(inputs)).encode()).hexdigest()[:24]
    return f"{PART_PREFIX}{digest}.parquet"


def _parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def write_part(output: str, table: pa.Table, *, endpoint_url: str | None = None) -> str:
    """Atomically write a batch's rows as ``manifest/part-<hash of its inputs>.parquet``."""
    filesystem, root = fs.resolve(output, endpoint_url=endpoint_url)
    name = part_name(table.column("input").to_pylist())
    fs.write_bytes_atomic(
        filesystem, posixpath.join(root, MANIFEST_DIR, name), _parquet_bytes(table)
    )
    return name


def read_parts(
    output: str, *, inputs: set[str] | None = None, endpoint_url: str | None = None
) -> dict[str, dict[str, Any]]:
    """input -> the most recent ``ok`` row recorded in the part files (optionally only ``inputs``)."""
    filesystem, root = fs.resolve(output, endpoint_url=endpoint_url)
    base = posixpath.join(root, MANIFEST_DIR)
    names = [
        rel
        for rel in fs.list_files(fs.join(output, MANIFEST_DIR), endpoint_url=endpoint_url)
        if rel.startswith(PART_PREFIX) and rel.endswith(".parquet")
    ]

    def read(name: str) -> list[dict[str, Any]]:
        try:
            with filesystem.open_input_file(posixpath.join(base, name)) as f:
                table = pq.read_table(f)
        except Exception as exc:  # an unreadable part only costs the details of skipped rows
            logger.warning("ignoring unreadable manifest part %s (%s)", name, exc)
            return []
        rows = table.to_pylist()
        return [
            r for r in rows if r.get("status") == OK and (inputs is None or r["input"] in inputs)
        ]

    latest: dict[str, dict[str, Any]] = {}
    with ThreadPoolExecutor(max_workers=8) as pool:
        for rows in pool.map(read, names):
            for row in rows:
                old = latest.get(row["input"])
                if old is None or _stamp(row) >= _stamp(old):
                    latest[row["input"]] = row
    return latest


def _stamp(row: dict[str, Any]) -> dt.datetime:
    return row.get("finished_at") or dt.datetime.min.replace(tzinfo=dt.timezone.utc)


def skipped_row(
    input_uri: str,
    relative_path: str,
    output_uri: str,
    previous: dict[str, Any] | None,
    job_id: str,
) -> dict[str, Any]:
    """A ``skipped`` row, with the details an earlier run recorded when there are any."""
    row = base_row(input=input_uri, relative_path=relative_path)
    if previous:
        row.update({k: previous.get(k) for k in FIELDS})
    row.update(
        status=SKIPPED,
        output=output_uri,
        error=None,
        job_id=job_id,
        finished_at=dt.datetime.now(dt.timezone.utc),
    )
    return row


def failed_row(input_uri: str, relative_path: str, error: str, **values: Any) -> dict[str, Any]:
    return base_row(
        input=input_uri, relative_path=relative_path, status=FAILED, error=error, **values
    )


def cleanup_temporary_files(output: str, *, endpoint_url: str | None = None) -> int:
    """Remove temporary siblings (``.<name>.<hex>.tmp``) a killed run left (local outputs; S3
    writes are single PUTs and leave none). Returns how many were removed."""
    filesystem, root = fs.resolve(output, endpoint_url=endpoint_url)
    if not isinstance(filesystem, pafs.LocalFileSystem):
        return 0
    removed = 0
    for rel in fs.list_files(output, endpoint_url=endpoint_url):
        name = posixpath.basename(rel)
        if name.startswith(".") and name.endswith(".tmp"):
            try:
                filesystem.delete_file(posixpath.join(root, rel))
                removed += 1
            except OSError:
                pass
    if removed:
        logger.info("removed %d temporary files left by an interrupted run", removed)
    return removed


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value


def write_final(
    output: str, table: pa.Table, *, fmt: str = "parquet", endpoint_url: str | None = None
) -> str:
    """Write the consolidated manifest atomically; returns its URI."""
    filesystem, root = fs.resolve(output, endpoint_url=endpoint_url)
    name = f"manifest.{fmt}"
    if fmt == "parquet":
        data = _parquet_bytes(table)
    elif fmt == "jsonl":
        lines = []
        for batch in table.to_batches(max_chunksize=10_000):
            for row in batch.to_pylist():
                lines.append(json.dumps({k: _jsonable(v) for k, v in row.items()}))
        data = ("\n".join(lines) + "\n").encode() if lines else b""
    else:
        raise ValueError(f"unknown manifest format {fmt!r}; use parquet or jsonl")
    fs.write_bytes_atomic(filesystem, posixpath.join(root, name), data)
    return fs.join(output, name)


def read_manifest(uri: str, *, endpoint_url: str | None = None) -> list[dict[str, Any]]:
    """The rows of a final manifest (parquet or jsonl), for tests and tools."""
    data = fs.read_bytes(uri, endpoint_url=endpoint_url)
    if uri.endswith(".parquet"):
        return pq.read_table(io.BytesIO(data)).to_pylist()
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]
