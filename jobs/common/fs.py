"""One filesystem factory for local paths and s3:// URIs (AWS, MinIO, a local S3 server alike).

pyarrow's S3FileSystem ignores AWS_ENDPOINT_URL, so the endpoint is passed explicitly here;
every job lists, reads and writes through `resolve` so local folders and buckets share one code path.
"""

from __future__ import annotations

import functools
import os
import posixpath
import uuid
from pathlib import Path

import pyarrow.fs as pafs

from jobs.common import s3
from unet_core.data import Lister

ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
"""Environment variables naming an S3-compatible endpoint, most specific first (boto3's order)."""


def s3_endpoint(explicit: str | None = None) -> str | None:
    """The S3 endpoint: ``explicit`` (--s3-endpoint-url), else $AWS_ENDPOINT_URL_S3, else
    $AWS_ENDPOINT_URL; None = AWS itself. Jobs fix it on the driver and pass it to every task."""
    return explicit or next((os.environ[k] for k in ENDPOINT_ENV if os.environ.get(k)), None)


def is_remote(uri: str) -> bool:
    return "://" in str(uri) and not str(uri).startswith("file://")


def s3_filesystem(endpoint_url: str | None = None, bucket: str | None = None) -> pafs.S3FileSystem:
    """An S3 filesystem for an S3-compatible endpoint (`s3_endpoint`) under the project's S3
    policy (`jobs.common.s3`: retries, timeouts), signing for ``bucket``'s region
    (`jobs.common.s3.bucket_region`); without a bucket, the explicit region or us-east-1."""
    endpoint = s3_endpoint(endpoint_url)
    if bucket:
        region = s3.bucket_region(bucket, endpoint)
    else:
        region = s3.explicit_region() or s3.DEFAULT_REGION
    return _s3_filesystem(endpoint, region)


@functools.lru_cache(maxsize=8)
def _s3_filesystem(endpoint: str | None, region: str) -> pafs.S3FileSystem:
    """One client per (endpoint, region) and process: S3 clients are costly to build."""
    return s3.filesystem(endpoint, region)


def resolve(uri: str | Path, *, endpoint_url: str | None = None) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it). Local paths become absolute, so Ray workers agree on them."""
    uri = str(uri)
    if uri.startswith("s3://"):
        path = uri[len("s3://") :].rstrip("/")
        return s3_filesystem(endpoint_url, bucket=path.split("/", 1)[0]), path
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if is_remote(uri):
        raise ValueError(
            f"unsupported URI scheme in {uri!r}: use a local path or s3://bucket/prefix"
        )
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


def absolute(uri: str | Path) -> str:
    """A local path made absolute; s3:// URIs unchanged."""
    uri = str(uri)
    return uri.rstrip("/") if is_remote(uri) else str(Path(uri).expanduser().resolve())


def join(uri: str, *parts: str) -> str:
    uri = str(uri)
    if is_remote(uri):
        return posixpath.join(uri.rstrip("/"), *parts)
    return str(Path(uri).joinpath(*parts))


def list_files(uri: str, *, endpoint_url: str | None = None) -> list[str]:
    """All files under a folder or prefix, recursively, as sorted relative posix paths."""
    fs, base = resolve(uri, endpoint_url=endpoint_url)
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.NotFound:
        return []
    if info.type == pafs.FileType.File:
        raise NotADirectoryError(f"{uri} is a file; expected a folder or prefix")
    selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
    prefix = base.rstrip("/") + "/"
    out = []
    for item in fs.get_file_info(selector):
        if item.type != pafs.FileType.File:
            continue
        rel = item.path[len(prefix) :] if item.path.startswith(prefix) else item.path
        out.append(rel.replace(os.sep, "/"))
    return sorted(out)


def make_lister(root_uri: str, *, endpoint_url: str | None = None) -> Lister:
    """A `unet_core.data.Lister` over a local or S3 root."""

    def lister(folder: str) -> list[str]:
        return list_files(join(root_uri, folder), endpoint_url=endpoint_url)

    return lister


def read_bytes(uri: str, *, endpoint_url: str | None = None) -> bytes:
    if os.path.isabs(uri):  # a local absolute path (what listings give): read it as it is
        with open(uri, "rb") as f:
            return f.read()
    fs, path = resolve(uri, endpoint_url=endpoint_url)
    with fs.open_input_stream(path) as f:
        return f.read()


def exists(uri: str, *, endpoint_url: str | None = None) -> bool:
    fs, path = resolve(uri, endpoint_url=endpoint_url)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


TEMP_SUFFIX = ".tmp"


def temp_name(name: str, owner: str = "") -> str:
    """The hidden sibling a write goes through: ``.<name>.<owner>-<nonce>.tmp``. ``owner`` (a
    job id) says which job left a stray one; cleanup goes by age alone."""
    return f".{name}.{owner or 'anon'}-{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}"


def is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def write_bytes_atomic(fs: pafs.FileSystem, path: str, data: bytes, *, owner: str = "") -> None:
    """Write so that no reader ever sees a half-written file under `path`.

    Local: write a temporary sibling (`temp_name`, carrying ``owner``), then rename over the
    final name. S3: a single PUT is atomic already (the object appears whole or not at all).
    """
    if isinstance(fs, pafs.LocalFileSystem):
        parent = os.path.dirname(path)
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, temp_name(os.path.basename(path), owner))
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return
    with fs.open_output_stream(path) as f:
        f.write(data)
