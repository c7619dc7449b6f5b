"""Streamed listings: the inputs of a segment run and the files already under its output,
listed by Ray tasks in parallel across prefixes, as Arrow tables that stay in the object
store (the driver holds their references).

A listing starts with one small task that walks the first levels of the tree (`SHARD_DEPTH`)
and returns the folders (prefixes) found there; each becomes a shard that a listing task lists
with a paged `pyarrow.fs.FileSelector` (S3: ``ListObjectsV2``, 1,000 keys a page); at most
`MAX_LIST_TASKS` tasks share the shards, one table each. The driver keeps the shard names
only: a few per folder, never a row per file. ``--input-list`` files (text or Parquet) stream
the same way, read by ``ray.data.read_text`` / ``read_parquet``.

Rows carry plain keys (relative path, mask key), which the work list
(`jobs.segmenting.worklist`) matches against the manifest with ``pyarrow.compute.is_in``.

Temporaries met while listing the output are removed by age alone (older than
``--temp-max-age``): a local write's temporary lives for the write (microseconds to seconds)
and a single-PUT S3 write leaves none, so an older one was left by a killed writer. Where age
alone is not safe, other rules stay:

- a writer slower than ``--temp-max-age`` (a huge file on a slow mount) would lose its
  temporary: keep the age well above the longest write (default an hour);
- unfinished S3 multipart uploads (pyarrow streams large objects in parts) are invisible to a
  listing and aborted by age (`jobs.segmenting.leases.abort_stale_uploads`); the same bound;
- lease files are not temporaries: they say which model's job writes the output now, and a
  heartbeat, not their age, decides (`jobs.segmenting.leases`);
- the QC report's charts and thumbnails are kept while a page may name them
  (`jobs.reporting.qc_report`).
"""

from __future__ import annotations

import logging
import posixpath
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from jobs.common import fs
from jobs.segmenting.layout import MANIFEST_DIR, MASKS_DIR, is_temporary, mask_key
from unet_core.data import IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)

SHARD_DEPTH = 2
"""Folder levels walked by the first task: each folder at this depth is listed (recursively)
by a task of its own; the files of shallower folders by one task per folder."""
MAX_SHARDS = 4096
"""Stop walking deeper once this many folders are known (they are listed in parallel anyway)."""
LIST_BLOCK_ROWS = 20_000
"""Rows per listing block."""

INPUT_SCHEMA = pa.schema(
    [
        pa.field("input", pa.string()),  # full URI or absolute path
        pa.field("relative_path", pa.string()),  # path under --input: the manifest's key
        pa.field("mask", pa.string()),  # mask key: two inputs with one mask collide here
        pa.field("row_id", pa.int64()),  # unique per listed row (duplicates in an input list)
        pa.field("error", pa.string()),  # an --input-list entry outside --input
    ]
)


def is_image(rel: str) -> bool:
    """An image the job reads: a known extension (any case), no hidden part in its path."""
    return posixpath.splitext(rel)[1].lower() in IMAGE_EXTENSIONS and not _hidden(rel)


def _hidden(rel: str) -> bool:
    """A hidden file, or one in a hidden folder (temporaries, tools' caches)."""
    return any(part.startswith(".") for part in rel.split("/"))


@dataclass(frozen=True)
class Shard:
    """One listing task's share of a tree."""

    path: str
    """Folder (prefix) inside the filesystem."""
    recursive: bool
    """List everything below (a deepest folder), or its own files only (a shallower one)."""


def _entries(filesystem: pafs.FileSystem, path: str, recursive: bool) -> list[pafs.FileInfo]:
    selector = pafs.FileSelector(path, recursive=recursive, allow_not_found=True)
    return filesystem.get_file_info(selector)


def shards(uri: str, *, endpoint_url: str | None, skip: Sequence[str] = ()) -> list[Shard]:
    """The shards of the tree under ``uri``: one per folder at `SHARD_DEPTH` (recursive) and
    one per shallower folder (its own files). Hidden folders and ``skip`` (relative folder
    paths, e.g. an output inside the input) are left out."""
    filesystem, base = fs.resolve(uri, endpoint_url=endpoint_url)
    info = filesystem.get_file_info(base)
    if info.type == pafs.FileType.NotFound:
        return []
    if info.type == pafs.FileType.File:
        raise NotADirectoryError(f"{uri} is a file; expected a folder or prefix")
    skipped = {posixpath.join(base, s.strip("/")) for s in skip}
    out, level = [], [base]
    for _ in range(SHARD_DEPTH):
        deeper = []
        for folder in level:
            out.append(Shard(folder, recursive=False))
            deeper += [
                e.path.rstrip("/")
                for e in _entries(filesystem, folder, recursive=False)
                if e.type == pafs.FileType.Directory
                and not posixpath.basename(e.path.rstrip("/")).startswith(".")
                and e.path.rstrip("/") not in skipped
            ]
        level = sorted(deeper)
        if len(out) + len(level) >= MAX_SHARDS:
            break
    out += [Shard(folder, recursive=True) for folder in level]
    return out


def find_shards(uri: str, *, endpoint_url: str | None, skip: Sequence[str] = ()) -> list[Shard]:
    """`shards`, walked by a Ray task: a folder of a million files is never listed into the
    driver's memory, not even one level of it."""
    import ray

    return ray.get(
        ray.remote(shards).options(num_cpus=0.25).remote(uri, endpoint_url=endpoint_url, skip=skip)
    )


def shard_items(shard_list: list[Shard]) -> list[dict[str, Any]]:
    return [{"path": s.path, "recursive": s.recursive} for s in shard_list]


def _files(
    filesystem: pafs.FileSystem, base: str, shard: dict[str, Any]
) -> Iterator[tuple[str, pafs.FileInfo]]:
    """(path relative to base, info) of the files of one shard."""
    prefix = base.rstrip("/") + "/"
    for entry in _entries(filesystem, shard["path"], shard["recursive"]):
        if entry.type != pafs.FileType.File:
            continue
        path = entry.path
        yield (path[len(prefix) :] if path.startswith(prefix) else path), entry


def _row_ids(n: int) -> pa.Array:
    start = secrets.randbits(62)
    return pa.array(np.arange(start, start + n, dtype=np.int64))


def input_rows(
    uris: list[str], rels: list[str], errors: list[str | None] | None = None
) -> pa.Table:
    """Rows of `INPUT_SCHEMA` for these inputs."""
    return pa.table(
        [
            pa.array(uris, pa.string()),
            pa.array(rels, pa.string()),
            pa.array([mask_key(r) for r in rels], pa.string()),
            _row_ids(len(rels)),
            pa.array(errors or [None] * len(rels), pa.string()),
        ],
        schema=INPUT_SCHEMA,
    )


def list_input_shards(
    batch: pa.Table, *, base_uri: str, endpoint_url: str | None, skip: Sequence[str] = ()
) -> Iterator[pa.Table]:
    """Shard rows -> the images they hold, as `INPUT_SCHEMA` tables of at most
    `LIST_BLOCK_ROWS` rows (run by `listing_tasks`)."""
    filesystem, base = fs.resolve(base_uri, endpoint_url=endpoint_url)
    inner = tuple(s.strip("/") + "/" for s in skip)
    rels: list[str] = []
    for shard in batch.to_pylist():
        for rel, _ in _files(filesystem, base, shard):
            if is_image(rel) and not rel.startswith(inner):
                rels.append(rel)
            if len(rels) >= LIST_BLOCK_ROWS:
                yield input_rows([fs.join(base_uri, r) for r in rels], rels)
                rels = []
    # The last block, even empty: every block of the dataset has this schema.
    yield input_rows([fs.join(base_uri, r) for r in rels], rels)


def relative_to_base(entry: str, base: str) -> str | None:
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


def input_list_rows(batch: pa.Table, *, base_uri: str, column: str) -> pa.Table:
    """Ray Data UDF: --input-list entries -> `INPUT_SCHEMA` rows; an entry outside --input is
    a row with its ``error`` (the run is refused, naming a few)."""
    uris, rels, errors = [], [], []
    for entry in batch.column(column).to_pylist():
        entry = (entry or "").strip()
        if not entry or entry.startswith("#"):
            continue
        rel = relative_to_base(entry, base_uri)
        outside = rel is None or rel.startswith("../") or rel == ".."
        rels.append(entry if outside else rel)
        uris.append(entry if outside else fs.join(base_uri, rel))
        errors.append(f"{entry}: not under --input {base_uri}" if outside else None)
    return input_rows(uris, rels, errors)


def input_blocks(
    *,
    base_uri: str,
    input_list: str | None,
    output_uri: str,
    endpoint_url: str | None,
    num_cpus: float,
) -> list:
    """Object references of `INPUT_SCHEMA` tables: --input listed in shards by Ray tasks, or
    --input-list streamed by Ray Data (text: one entry per line; Parquet: a ``path`` column)."""
    import ray

    if input_list:
        source = fs.absolute(input_list)
        filesystem, path = fs.resolve(source, endpoint_url=endpoint_url)
        if filesystem.get_file_info(path).type != pafs.FileType.File:
            raise FileNotFoundError(f"--input-list {input_list}: no such file")
        if source.lower().endswith(".parquet"):
            ds = ray.data.read_parquet(path, filesystem=filesystem)
            if "path" not in ds.schema().names:
                raise ValueError(
                    f"{input_list}: a Parquet input list needs a 'path' column, found "
                    f"{ds.schema().names}"
                )
            ds, column = ds.select_columns(["path"]), "path"
        else:
            ds, column = ray.data.read_text(path, filesystem=filesystem), "text"
        return (
            ds.map_batches(
                input_list_rows,
                fn_kwargs={"base_uri": base_uri, "column": column},
                batch_format="pyarrow",
                batch_size=LIST_BLOCK_ROWS,
                num_cpus=num_cpus,
            )
            .materialize()
            .to_arrow_refs()
        )
    skip = []
    if output_uri.startswith(base_uri.rstrip("/") + "/"):  # outputs inside the input folder
        skip.append(output_uri[len(base_uri.rstrip("/")) + 1 :])
    found = find_shards(base_uri, endpoint_url=endpoint_url, skip=skip)
    logger.info("listing %s in %d shards", base_uri, len(found))
    return listing_tasks(
        list_input_shards,
        found,
        num_cpus=num_cpus,
        base_uri=base_uri,
        endpoint_url=endpoint_url,
        skip=skip,
    )


SHARD_SCHEMA = pa.schema([pa.field("path", pa.string()), pa.field("recursive", pa.bool_())])
MAX_LIST_TASKS = 64
"""Most listing tasks of one listing (each takes a contiguous group of shards)."""


def _list_group(fn: Any, shard_rows: pa.Table, kwargs: dict[str, Any]) -> pa.Table:
    return pa.concat_tables(list(fn(shard_rows, **kwargs)))


def listing_tasks(fn: Any, found: list[Shard], *, num_cpus: float, **kwargs: Any) -> list:
    """Run the listing UDF ``fn`` over groups of shards in Ray tasks; one table reference per
    task (the tables stay in the object store)."""
    import ray

    table = pa.Table.from_pylist(shard_items(found), schema=SHARD_SCHEMA)
    groups = np.array_split(np.arange(len(found)), min(MAX_LIST_TASKS, max(1, len(found))))
    task = ray.remote(_list_group).options(num_cpus=num_cpus)
    return [task.remote(fn, table.take(pa.array(g)), kwargs) for g in groups if len(g)]


# --- what is under the output ------------------------------------------------------------------

OUTPUT_SCHEMA = pa.schema([pa.field("mask", pa.string())])
"""Keys (under masks/) of the complete masks under the output."""


def list_output_shards(
    batch: pa.Table, *, output_uri: str, endpoint_url: str | None, temp_max_age: float | None
) -> Iterator[pa.Table]:
    """Shard rows of the output -> the keys of the complete masks under masks/ (run by
    `listing_tasks`); temporaries older than ``temp_max_age`` met on the way are deleted
    (None: none, a dry run)."""
    filesystem, base = fs.resolve(output_uri, endpoint_url=endpoint_url)
    masks_prefix = MASKS_DIR + "/"
    now = time.time()
    keys, removed = [], 0
    for shard in batch.to_pylist():
        for rel, entry in _files(filesystem, base, shard):
            if is_temporary(posixpath.basename(rel)):
                age = now - entry.mtime.timestamp() if entry.mtime else float("inf")
                if temp_max_age is not None and age > temp_max_age:
                    try:
                        filesystem.delete_file(entry.path)
                        removed += 1
                    except OSError:  # removed by another job meanwhile
                        pass
                continue
            if rel.startswith(masks_prefix) and rel.endswith(".png") and not _hidden(rel):
                keys.append(rel[len(masks_prefix) :])
            if len(keys) >= LIST_BLOCK_ROWS:
                yield pa.table([pa.array(keys, pa.string())], schema=OUTPUT_SCHEMA)
                keys = []
    if removed:
        logger.info("removed %d abandoned temporary files under %s", removed, output_uri)
    # The last block, even empty: one schema throughout.
    yield pa.table([pa.array(keys, pa.string())], schema=OUTPUT_SCHEMA)


def output_blocks(
    *, output_uri: str, endpoint_url: str | None, temp_max_age: float | None, num_cpus: float
) -> list:
    """Object references of tables of the keys of the complete masks under ``<output>/masks``
    (the manifest folder is read apart, by `jobs.segmenting.manifest`)."""
    found = find_shards(output_uri, endpoint_url=endpoint_url, skip=[MANIFEST_DIR])
    return listing_tasks(
        list_output_shards,
        found,
        num_cpus=num_cpus,
        output_uri=output_uri,
        endpoint_url=endpoint_url,
        temp_max_age=temp_max_age,
    )
