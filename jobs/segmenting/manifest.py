"""The segmentation manifest: a Parquet dataset under ``<output>/manifest/`` holding the latest
row of every input ever processed into this output.

- **While a job runs,** each write task stores the rows of its batch as
  ``manifest/part-<job id>-<hash of the batch's inputs>.parquet`` (atomic; a retried batch
  replaces its own part). A kill loses at most the rows of the batches in flight; their masks
  then have no row, and the next run redoes them.
- **At the end,** the job compacts the files it saw when it started compacting into a few
  large ``data-<time>-<job id>-<tag>.parquet`` files: Ray Data reads them, hash-partitions the
  rows by relative path (``Dataset.repartition(n, keys=["relative_path"])``) and keeps the
  latest row per input in each block (`latest`). All new files are written before any old
  file is deleted. Rows of earlier runs are carried over; parts another job writes meanwhile
  are not touched (they are compacted by the next run); a file another job's compaction
  deleted meanwhile is skipped (its rows are in that job's new files). Readers see every row
  at every moment and take the latest per input (`latest_rows`), so duplicates between
  compaction steps are harmless.
- ``<output>/manifest.parquet`` (or ``.jsonl``) is the same latest rows in one file, rewritten
  at the end of each run: it covers every input of the output, not only the last run's.

Anyone can read the dataset: ``pyarrow.dataset.dataset(<output>/manifest)``,
``ray.data.read_parquet``, pandas; take the row with the latest ``finished_at`` per
``relative_path``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import logging
import math
import posixpath
import time
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from jobs.common import fs
from jobs.segmenting import layout
from jobs.segmenting.layout import MANIFEST_DIR

logger = logging.getLogger(__name__)

OK, FAILED, SKIPPED = "ok", "failed", "skipped"
ROWS_PER_DATA_FILE = 1_000_000
"""Target rows per compacted file (the number of buckets follows from the rows)."""
BYTES_PER_DATA_FILE = 64 * 2**20
"""Target Parquet bytes per compacted file (zstd rows are ~50-100 bytes: about 1M rows)."""
FILES_PER_READ_TASK = 64
"""Manifest files read by one task (parts are small: one per write batch)."""
PROVENANCE_COLUMNS = ["relative_path", "status", "checkpoint_sha256", "settings", "model_uri",
                      "model_version", "finished_at"]  # fmt: skip
"""What a rerun needs to know of an earlier row."""


def schema(class_names: Sequence[str]) -> pa.Schema:
    """Manifest columns; ``class_fractions`` is a struct with one field per class name."""
    return pa.schema(
        [
            pa.field("input", pa.string()),  # full URI or absolute path of the image
            pa.field("relative_path", pa.string()),  # path under --input (the key)
            pa.field("output", pa.string()),  # mask URI (null when failed)
            pa.field("status", pa.string()),  # ok | failed
            pa.field("error", pa.string()),
            pa.field("width", pa.int32()),
            pa.field("height", pa.int32()),
            pa.field("exif_orientation", pa.int8()),  # applied to the input (1 = none)
            pa.field("class_fractions", pa.struct([(n, pa.float64()) for n in class_names])),
            pa.field("mean_confidence", pa.float64()),
            pa.field("model_name", pa.string()),
            pa.field("model_version", pa.string()),
            pa.field("model_uri", pa.string()),
            pa.field("checkpoint_sha256", pa.string()),  # the weights that made the mask
            pa.field("settings", pa.string()),  # `layout.output_settings` of the run
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
            fractions = {k: v for k, v in fractions.items() if k in names}  # another model's
        cleaned.append({**{k: row.get(k) for k in FIELDS}, "class_fractions": fractions})
    return pa.Table.from_pylist(cleaned, schema=sch)


def failed_row(input_uri: str, relative_path: str, error: str, **values: Any) -> dict[str, Any]:
    return base_row(
        input=input_uri, relative_path=relative_path, status=FAILED, error=error, **values
    )


def parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def write_part(
    output: str, table: pa.Table, *, job_id: str = "", endpoint_url: str | None = None
) -> str:
    """Atomically write a batch's rows as ``manifest/part-<job>-<hash of its inputs>.parquet``."""
    filesystem, root = fs.resolve(output, endpoint_url=endpoint_url)
    name = layout.part_name(table.column("input").to_pylist(), job_id)
    fs.write_bytes_atomic(
        filesystem, posixpath.join(root, MANIFEST_DIR, name), parquet_bytes(table), owner=job_id
    )
    return name


# --- reading the dataset ----------------------------------------------------------------------


def dataset_files(
    output: str, *, endpoint_url: str | None = None, max_temp_age_s: float | None = None
) -> list[str]:
    """Paths (inside the filesystem) of the manifest files under ``<output>/manifest``; with
    ``max_temp_age_s``, temporaries older than that are removed (see `jobs.segmenting.listing`
    for why age alone is safe)."""
    filesystem, root = fs.resolve(output, endpoint_url=endpoint_url)
    selector = pafs.FileSelector(posixpath.join(root, MANIFEST_DIR), allow_not_found=True)
    files, now = [], time.time()
    for info in filesystem.get_file_info(selector):
        name = posixpath.basename(info.path)
        if info.type != pafs.FileType.File:
            continue
        if layout.is_temporary(name):
            age = now - info.mtime.timestamp() if info.mtime else float("inf")
            if max_temp_age_s is not None and age > max_temp_age_s:
                with contextlib.suppress(OSError):  # removed by another job meanwhile
                    filesystem.delete_file(info.path)
            continue
        if name.endswith(".parquet") and not name.startswith("."):
            files.append(info.path)
    return sorted(files)


def _read(filesystem: pafs.FileSystem, path: str, columns: list[str] | None) -> pa.Table | None:
    """One manifest file (the ``columns`` it has, the others null); None when it is gone (a
    concurrent compaction moved its rows into a newer file) or unreadable."""
    try:
        with filesystem.open_input_file(path) as f:
            table = pq.read_table(f)
    except FileNotFoundError:
        return None
    except Exception as exc:  # a damaged part costs its rows only: their masks are redone
        logger.warning("ignoring unreadable manifest file %s (%s)", path, exc)
        return None
    if columns is None:
        return table
    for name in columns:
        if name not in table.column_names:
            field = schema([]).field(name)
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    return table.select(columns)


def first_of_each(table: pa.Table, column: str) -> pa.Table:
    """The first row of each run of equal values of ``column`` (in a table sorted by it)."""
    values = table.column(column).combine_chunks()
    first = np.ones(len(values), dtype=bool)
    if len(values) > 1:
        first[1:] = pc.not_equal(values.slice(1), values.slice(0, len(values) - 1)).to_numpy(
            zero_copy_only=False
        )
    return table.filter(pa.array(first))


def latest(table: pa.Table) -> pa.Table:
    """The latest row (by ``finished_at``) of every ``relative_path``."""
    if table.num_rows == 0:
        return table
    table = table.sort_by([("relative_path", "ascending"), ("finished_at", "descending")])
    return first_of_each(table, "relative_path")


def concat(tables: Sequence[pa.Table], columns: list[str] | None = None) -> pa.Table:
    """Manifest tables of models with other classes in one (class_fractions fields merged);
    no tables: an empty table of ``columns`` (default all)."""
    if not tables:
        return schema([]).empty_table().select(columns or FIELDS)
    return pa.concat_tables(list(tables), promote_options="permissive")


def read_latest(
    paths: Sequence[str], *, output: str, endpoint_url: str | None, columns: list[str] | None
) -> pa.Table:
    """The latest rows in these manifest files (a Ray task's share of the dataset)."""
    filesystem, _ = fs.resolve(output, endpoint_url=endpoint_url)
    tables = [t for t in (_read(filesystem, p, columns) for p in paths) if t is not None]
    return latest(concat(tables, columns))


def _read_batch(batch: pa.Table, *, output: str, endpoint_url: str | None) -> pa.Table:
    """Ray Data UDF: manifest file paths -> the latest rows in those files."""
    paths = batch.column("path").to_pylist()
    return read_latest(paths, output=output, endpoint_url=endpoint_url, columns=None)


def chunks(paths: Sequence[str], size: int = FILES_PER_READ_TASK) -> list[list[str]]:
    return [list(paths[i : i + size]) for i in range(0, len(paths), size)]


def latest_rows(output: str, *, endpoint_url: str | None = None) -> pa.Table:
    """Every input's latest row, read in this process (for tests and small outputs; jobs read
    the dataset in Ray tasks)."""
    files = dataset_files(output, endpoint_url=endpoint_url)
    return read_latest(files, output=output, endpoint_url=endpoint_url, columns=None)


# --- compaction -------------------------------------------------------------------------------


def _write_block(
    table: pa.Table, *, output: str, endpoint_url: str | None, job_id: str, stamp: str
) -> pa.Table:
    """Ray Data UDF over one hash partition: its latest rows as one compacted file; a row of
    (its path or null, its rows)."""
    merged = latest(table)
    path = None
    if merged.num_rows:
        filesystem, root = fs.resolve(output, endpoint_url=endpoint_url)
        name = layout.data_name(stamp, job_id, uuid.uuid4().hex[:8])
        path = posixpath.join(root, MANIFEST_DIR, name)
        fs.write_bytes_atomic(filesystem, path, parquet_bytes(merged), owner=job_id)
    return pa.table({"path": [path], "rows": [merged.num_rows]})


def _delete(paths: list[str], output: str, endpoint_url: str | None) -> int:
    filesystem, _ = fs.resolve(output, endpoint_url=endpoint_url)
    deleted = 0
    for path in paths:
        try:
            filesystem.delete_file(path)
            deleted += 1
        except (FileNotFoundError, OSError):  # another compaction removed it
            pass
    return deleted


def compact(
    output: str, *, job_id: str, expected_rows: int, endpoint_url: str | None = None
) -> dict[str, Any]:
    """Compact the manifest dataset with Ray Data (see the module docstring); returns the new
    files and their row count. Nothing but file paths and counts passes through the driver. A
    dataset that one compaction wrote and nothing changed since (a rerun that skipped every
    input) is left as it is."""
    import ray

    files = dataset_files(output, endpoint_url=endpoint_url)
    if not files:
        return {"files": [], "rows": 0}
    # Rows of earlier runs count too (a rerun of a few inputs over a large output): the
    # files' bytes bound them.
    filesystem, _ = fs.resolve(output, endpoint_url=endpoint_url)
    stored = sum(info.size or 0 for info in filesystem.get_file_info(files))
    buckets = max(
        1,
        math.ceil(expected_rows / ROWS_PER_DATA_FILE),
        math.ceil(stored / BYTES_PER_DATA_FILE),
    )
    if _compacted(files, buckets):
        return {"files": files, "rows": sum(_footer_rows(filesystem, f) for f in files)}
    where = {"output": output, "endpoint_url": endpoint_url}
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    written = (
        ray.data.from_items([{"path": f} for f in files])
        .map_batches(_read_batch, fn_kwargs=where, batch_size=FILES_PER_READ_TASK,
                     batch_format="pyarrow", num_cpus=0.5)
        .repartition(buckets, keys=["relative_path"])
        .map_batches(_write_block, fn_kwargs={**where, "job_id": job_id, "stamp": stamp},
                     batch_size=None, batch_format="pyarrow", num_cpus=0.5)
        .take_all()
    )  # fmt: skip
    new = {w["path"] for w in written if w["path"]}
    old = [f for f in files if f not in new]
    delete = ray.remote(_delete).options(num_cpus=0.25)
    ray.get([delete.remote(chunk, output, endpoint_url) for chunk in chunks(old, 512)])
    return {"files": sorted(new), "rows": sum(w["rows"] for w in written)}


def _compacted(files: list[str], buckets: int) -> bool:
    """Only the files of one compaction (one stamp and job: no input in two of them), no more
    than ``buckets``: compacting again would write the same rows."""
    names = [posixpath.basename(f) for f in files]
    runs = {n.rsplit("-", 1)[0] for n in names}
    return len(files) <= buckets and len(runs) == 1 and names[0].startswith(layout.DATA_PREFIX)


def _footer_rows(filesystem: pafs.FileSystem, path: str) -> int:
    with filesystem.open_input_file(path) as f:
        return pq.ParquetFile(f).metadata.num_rows


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value


def _write_final(output: str, fmt: str, endpoint_url: str | None, job_id: str) -> str:
    files = dataset_files(output, endpoint_url=endpoint_url)
    table = read_latest(files, output=output, endpoint_url=endpoint_url, columns=None)
    table = table.sort_by("relative_path")
    if fmt == "parquet":
        data = parquet_bytes(table)
    else:
        lines = []
        for batch in table.to_batches(max_chunksize=10_000):
            for row in batch.to_pylist():
                lines.append(json.dumps({k: _jsonable(v) for k, v in row.items()}))
        data = ("\n".join(lines) + "\n").encode() if lines else b""
    filesystem, root = fs.resolve(output, endpoint_url=endpoint_url)
    name = layout.final_manifest(fmt)
    fs.write_bytes_atomic(filesystem, posixpath.join(root, name), data, owner=job_id)
    return fs.join(output, name)


def write_final(
    output: str, *, fmt: str = "parquet", job_id: str = "", endpoint_url: str | None = None
) -> str:
    """Write ``manifest.<fmt>``: the latest row of every input of the output (the whole
    dataset as it is now, another job's rows included), sorted by relative path, in a Ray
    task; returns its URI."""
    import ray

    layout.final_manifest(fmt)  # an unknown format fails here, before any work
    task = ray.remote(_write_final).options(num_cpus=0.5)
    return ray.get(task.remote(output, fmt, endpoint_url, job_id))


def read_manifest(uri: str, *, endpoint_url: str | None = None) -> list[dict[str, Any]]:
    """The rows of a final manifest (parquet or jsonl), for tests and tools."""
    data = fs.read_bytes(uri, endpoint_url=endpoint_url)
    if uri.endswith(".parquet"):
        return pq.read_table(io.BytesIO(data)).to_pylist()
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]
