"""The --report file of `jobs/evaluate.py`: one Parquet row per image, streamed and published whole.

Rows are written as the scoring stage's batches reach the driver (gathered into row groups of
at most `ROW_GROUP_ROWS`), so the driver holds a row group, never the whole set. Nothing
appears under the report's name before `publish`: a local report is written to a hidden
temporary sibling and renamed over the name; an s3:// report is spooled to a local temporary
file and uploaded in one stream at the end (pyarrow cannot abort a multipart upload, so
streaming straight to S3 would leave a partial object behind a failed run).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from types import TracebackType

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from jobs.common import fs

logger = logging.getLogger(__name__)

ROW_GROUP_ROWS = 8192
"""Rows per Parquet row group: scoring batches are a few rows, too small to be row groups."""


class ParquetReport:
    """A Parquet file written batch by batch and published atomically; a context manager that
    removes its temporary file on exit (the report stays unpublished unless `publish` ran)."""

    def __init__(self, uri: str, schema: pa.Schema, *, endpoint_url: str | None = None) -> None:
        self.uri = fs.absolute(uri)
        self.rows = 0
        self._fs, self._path = fs.resolve(uri, endpoint_url=endpoint_url)
        self._local = isinstance(self._fs, pafs.LocalFileSystem)
        name = os.path.basename(self._path)
        if self._local:
            parent = os.path.dirname(self._path)
            os.makedirs(parent, exist_ok=True)
            self._spool = os.path.join(parent, fs.temp_name(name))  # hidden sibling
        else:
            bucket = self._path.split("/", 1)[0]
            if self._fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                raise FileNotFoundError(
                    f"--report {uri}: bucket {bucket} does not exist (or cannot be seen with "
                    "these credentials and endpoint); create it or give another --report"
                )
            self._spool_dir = tempfile.mkdtemp(prefix="unet-eval-report-")
            self._spool = os.path.join(self._spool_dir, name)  # its name = the artifact's
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(self._spool, schema)
        self.published = False

    def write(self, table: pa.Table) -> None:
        """Append the rows of ``table`` (of the report's schema)."""
        self._pending.append(table)
        self._pending_rows += table.num_rows
        self.rows += table.num_rows
        if self._pending_rows >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self, *, final: bool = False) -> None:
        """Write the pending rows as full row groups (all of them when ``final``)."""
        if not self._pending_rows or self._writer is None:
            return
        table = pa.concat_tables(self._pending)
        cut = table.num_rows if final else table.num_rows - table.num_rows % ROW_GROUP_ROWS
        if cut:
            self._writer.write_table(table.slice(0, cut), row_group_size=ROW_GROUP_ROWS)
        rest = table.slice(cut)
        self._pending, self._pending_rows = ([rest] if rest.num_rows else []), rest.num_rows

    def publish(self) -> None:
        """Close the file and make it appear whole under the report's name."""
        self._flush(final=True)
        if self._writer is None:
            raise RuntimeError(f"{self.uri} is published already (or closed)")
        self._writer.close()
        self._writer = None
        if self._local:
            os.replace(self._spool, self._path)
            self._spool = self._path
        else:
            with open(self._spool, "rb") as src, self._fs.open_output_stream(self._path) as out:
                out.upload(src)  # one stream: the object appears when it closes
        self.published = True
        logger.info("report: %d rows in %s", self.rows, self.uri)

    @property
    def local_file(self) -> str:
        """A local copy of the published report (its own path when local), for MLflow; it
        lasts until the context exits."""
        if not self.published:
            raise RuntimeError(f"{self.uri} is not published yet; call publish() first")
        return self._spool

    def __enter__(self) -> ParquetReport:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._local:
            if not self.published and os.path.exists(self._spool):
                os.unlink(self._spool)
        else:
            shutil.rmtree(self._spool_dir, ignore_errors=True)
