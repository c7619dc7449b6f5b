"""Who is writing an output right now: a lease file per segment job, so that concurrent jobs on
one output never hurt each other.

Each job writes ``<output>/manifest/_leases/<job id>.json`` (model, settings, host, pid, start
time) when it starts, rewrites it every `HEARTBEAT_S` seconds and deletes it at the end. A
lease is live while its heartbeat is younger than `LEASE_TTL_S`, unless its host is this host
and its pid is gone (a killed job is seen at once by a rerun on the same node).

The rule for a second job on an output that a live job holds:

- **Same model and settings: share.** Both run; an input both process gets the same mask
  bytes (atomic renames) and the latest manifest row wins; neither deletes the other's
  temporaries (only those older than --temp-max-age are removed, by anyone) nor manifest
  parts (compaction deletes only files it read and rewrote).
- **Another model or settings: refuse**, naming the live job, unless this job started first
  (of two jobs starting at once, exactly the later one refuses).

Leases sit under ``manifest/_leases``: ``pyarrow.dataset`` and Ray ignore ``_``-prefixed
paths, so readers of the manifest dataset never see them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import pyarrow.fs as pafs

from jobs.common import fs
from jobs.segmenting.layout import LEASES_DIR

logger = logging.getLogger(__name__)

HEARTBEAT_S = 20.0
"""Seconds between two writes of a live job's lease."""
LEASE_TTL_S = 120.0
"""A lease not rewritten for this long belongs to a job that is gone."""


class OutputBusyError(ValueError):
    """Another live job with another model or settings is writing this output."""

    exit_kind = "output"  # a job ends with exit code 2 (jobs.common.exits)


@dataclass(frozen=True)
class Lease:
    job_id: str
    provenance: str
    """`jobs.segmenting.layout.Provenance.key` of the job's model and settings."""
    model_uri: str
    settings: str
    host: str
    pid: int
    started: float
    heartbeat: float

    def alive(self, now: float) -> bool:
        if now - self.heartbeat > LEASE_TTL_S:
            return False
        if self.host == socket.gethostname():
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:  # another user's process: alive
                return True
        return True

    def describe(self) -> str:
        return (
            f"job {self.job_id} (model {self.model_uri}, {self.settings}; pid {self.pid} on "
            f"{self.host}, started {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(self.started))} UTC)"
        )


def live_leases(
    output: str, *, endpoint_url: str | None = None, remove_dead: bool = False
) -> list[Lease]:
    """The leases of the jobs writing ``output`` now (``remove_dead``: delete the others)."""
    filesystem, root = fs.resolve(output, endpoint_url=endpoint_url)
    selector = pafs.FileSelector(posixpath.join(root, LEASES_DIR), allow_not_found=True)
    now, out = time.time(), []
    for info in filesystem.get_file_info(selector):
        if info.type != pafs.FileType.File or not info.path.endswith(".json"):
            continue
        try:
            with filesystem.open_input_stream(info.path) as f:
                lease = Lease(**json.loads(f.read()))
        except (OSError, ValueError, TypeError):  # gone meanwhile, or half a file from a tool
            continue
        if lease.alive(now):
            out.append(lease)
        elif remove_dead:  # a killed job's lease: nothing else will ever remove it
            with contextlib.suppress(OSError):
                filesystem.delete_file(info.path)
    return out


@contextlib.contextmanager
def hold(
    output: str, *, job_id: str, provenance: str, model_uri: str, settings: str,
    endpoint_url: str | None = None,
) -> Iterator[list[Lease]]:  # fmt: skip
    """Hold a lease on ``output`` for the body (heartbeat thread; deleted at exit); yields the
    other live leases (all sharing this job's model and settings). Raises `OutputBusyError`
    when a live job with another model or settings holds the output and started first."""
    filesystem, root = fs.resolve(output, endpoint_url=endpoint_url)
    path = posixpath.join(root, LEASES_DIR, f"{job_id}.json")
    started = time.time()

    def write() -> None:
        lease = Lease(job_id, provenance, model_uri, settings, socket.gethostname(),
                      os.getpid(), started, time.time())  # fmt: skip
        fs.write_bytes_atomic(filesystem, path, json.dumps(asdict(lease)).encode(), owner=job_id)

    write()
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                write()
            except Exception as exc:  # a missed beat is retried; TTL allows several
                logger.warning("cannot renew the lease on %s (%s)", output, exc)

    thread = threading.Thread(target=beat, name=f"lease-{job_id}", daemon=True)
    thread.start()
    try:
        others = [lease for lease in live_leases(output, endpoint_url=endpoint_url, remove_dead=True)
                  if lease.job_id != job_id]  # fmt: skip
        conflicting = [
            lease for lease in others
            if lease.provenance != provenance and (lease.started, lease.job_id) < (started, job_id)
        ]  # fmt: skip
        if conflicting:
            raise OutputBusyError(
                f"{output} is being written by {conflicting[0].describe()}, with another model "
                "or other settings than this job; wait for it to finish, or write to another "
                "--output"
            )
        if others:
            logger.info(
                "sharing %s with %d live job(s) of the same model and settings: %s",
                output,
                len(others),
                "; ".join(lease.describe() for lease in others),
            )
        yield others
    finally:
        stop.set()
        thread.join(timeout=5)
        with contextlib.suppress(OSError):
            filesystem.delete_file(path)


def abort_stale_uploads(output: str, *, max_age_s: float, endpoint_url: str | None) -> int:
    """Abort the S3 multipart uploads under ``output`` started more than ``max_age_s`` ago (a
    killed writer leaves them behind, invisible and billed); returns how many. Local: 0."""
    if not output.startswith("s3://"):
        return 0
    import datetime as dt

    from jobs.common import s3

    bucket, _, prefix = output[len("s3://") :].partition("/")
    endpoint = fs.s3_endpoint(endpoint_url)
    client = s3.client(endpoint, s3.bucket_region(bucket, endpoint))
    cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=max_age_s)
    aborted = 0
    paginator = client.get_paginator("list_multipart_uploads")
    try:
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix.rstrip("/") + "/"):
            for upload in page.get("Uploads", []):
                if upload["Initiated"] < cutoff:
                    with contextlib.suppress(client.exceptions.NoSuchUpload):
                        client.abort_multipart_upload(
                            Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                        aborted += 1
    except client.exceptions.ClientError as exc:  # e.g. no s3:ListBucketMultipartUploads
        logger.warning(
            "cannot clean unfinished multipart uploads under %s (%s); the job goes on (an "
            "S3 lifecycle rule AbortIncompleteMultipartUpload does the same)",
            output,
            exc,
        )
    if aborted:
        logger.info("aborted %d unfinished multipart uploads under %s", aborted, output)
    return aborted
