"""The S3 client policy: which region a bucket is in, and how S3 clients retry and time out.

`jobs.common.fs` builds (and caches) every S3 filesystem through `filesystem`, and a boto3
client for what pyarrow cannot do comes from `client`: nothing else constructs either. Credentials are never passed here: pyarrow and boto3
each read the AWS chain (environment, ~/.aws, instance profile) on the node they run on.

What differs from pyarrow's defaults (pyarrow 25, AWS SDK for C++ underneath):

- retries: pyarrow's ``AwsStandardS3RetryStrategy(max_attempts=3)`` becomes
  ``AwsDefaultS3RetryStrategy`` with ``MAX_RETRIES`` (why not the standard strategy: see there);
- ``connect_timeout`` and ``request_timeout``: pyarrow leaves both unset (-1), so the SDK's
  defaults apply: a connect timeout of a second or so, and, on Linux (curl), a request aborted once it
  has moved less than 1 byte/s for 3 s. They become ``CONNECT_TIMEOUT_S`` / ``REQUEST_TIMEOUT_S``;
- ``allow_delayed_open``: pyarrow opens every output stream with a multipart upload, so a
  small object (a mask) costs three requests (create, part, complete); delayed, it is one PUT,
  a third of the requests that S3 counts towards throttling. Errors then surface at close,
  which every writer here reaches through ``with``;
- pickling: a pickled `pyarrow.fs.S3FileSystem` comes back with pyarrow's default retries (its
  ``__reduce__`` drops the strategy); ours is rebuilt through `filesystem` (Ray Train pickles
  the storage filesystem to every worker);
- region: pyarrow takes the SDK's guess (environment, profile, else us-east-1) whatever the
  bucket; `bucket_region` asks where the bucket is when no region is set explicitly.

Not covered (pyarrow 25): a GET's answer is read into a buffer of the object's size, so when a
GET of an object smaller than S3's error body (a few hundred bytes) is throttled, the SDK fails
with a non-retried INTERNAL_FAILURE ("Failed to flush response stream").
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

import pyarrow.fs as pafs

log = logging.getLogger(__name__)

REGION_ENV = ("AWS_REGION", "AWS_DEFAULT_REGION")
"""Environment variables that name the region explicitly, most specific first; they win over
any lookup (boto3's order)."""

DEFAULT_REGION = "us-east-1"
"""The region when none is set and a custom endpoint does not say (S3's own default)."""

MAX_RETRIES = 11
"""Retries of a failed S3 request (after the first attempt) before its error reaches the job.

S3 answers ``503 SlowDown`` while it scales a prefix up to a new request rate (many Ray workers
reaching one prefix at once is what triggers it), and ``500``/``503`` after brief internal
faults; pyarrow's default gives up after 3 attempts, within a few seconds. The SDK's default
strategy waits 0, 50 ms, 100 ms, ... 25.6 s between attempts (25 ms x 2^retry): 11 retries ride
out about 51 s of throttling in all.

Not the SDK's *standard* strategy (jittered, pyarrow's default), although it spreads retries
better: pyarrow's wrapper never reports successes back to it, so its retry quota (500 tokens,
5 per retry) is never refilled, and a filesystem that has retried 100 times (all requests of its
lifetime together; we cache one per process) never retries again. Measured with pyarrow 25.
"""

CONNECT_TIMEOUT_S = 10.0
"""Seconds to open a connection (the SDK's default is a second or so). A MinIO on a busy node
or a far region may take longer than that without anything being wrong; a dead endpoint is
still reported well within the retries' budget."""

REQUEST_TIMEOUT_S = 30.0
"""Seconds a request may stall (on Linux: move less than 1 byte/s) before it is aborted and
retried; the SDK's 3 s abort spurious requests on a node whose CPUs Ray keeps busy, and
each such abort spends a retry. 30 s still catches a connection that has truly hung."""


def explicit_region() -> str | None:
    """The region named by $AWS_REGION or $AWS_DEFAULT_REGION, if any."""
    return next((os.environ[k] for k in REGION_ENV if os.environ.get(k)), None)


def bucket_region(bucket: str, endpoint_url: str | None) -> str:
    """The region to sign requests for ``bucket`` with.

    An explicit region ($AWS_REGION, $AWS_DEFAULT_REGION) wins. Otherwise the bucket's own:
    on AWS (``endpoint_url`` None) from `pyarrow.fs.resolve_s3_region`; on a custom endpoint
    (MinIO, a local S3 server) from the endpoint's answer to HEAD bucket (the
    ``x-amz-bucket-region`` header) or GetBucketLocation, and `DEFAULT_REGION` only when it
    names none. Looked up once per (endpoint, bucket) and process; a failed lookup (bucket
    unknown on AWS, endpoint unreachable) raises OSError and is tried again next time.
    """
    return explicit_region() or _looked_up_region(endpoint_url or None, bucket)


@functools.lru_cache(maxsize=256)
def _looked_up_region(endpoint_url: str | None, bucket: str) -> str:
    if endpoint_url is None:
        try:
            return pafs.resolve_s3_region(bucket)
        except OSError as exc:
            raise OSError(
                f"cannot find the region of S3 bucket {bucket!r}: {exc}. Check the bucket "
                "name, or set $AWS_REGION to skip the lookup"
            ) from exc
    return _endpoint_region(endpoint_url, bucket)


def client(endpoint_url: str | None, region: str = DEFAULT_REGION) -> Any:
    """A boto3 S3 client under the same policy (for what pyarrow cannot do: bucket metadata,
    multipart uploads): standard retries, ``MAX_RETRIES`` of them, and the same timeouts.

    A session of its own per call: boto3's default session is not safe to share between
    threads. Credentials come from the AWS chain, as for pyarrow."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"mode": "standard", "total_max_attempts": MAX_RETRIES + 1},
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=REQUEST_TIMEOUT_S,
    )
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url, region_name=region, config=config
    )


def _endpoint_region(endpoint_url: str, bucket: str) -> str:
    """The region a custom S3 endpoint gives for ``bucket``; `DEFAULT_REGION` if it names none."""
    from botocore.exceptions import BotoCoreError, ClientError

    lookup = client(endpoint_url)
    try:
        try:
            headers = lookup.head_bucket(Bucket=bucket)["ResponseMetadata"]["HTTPHeaders"]
        except ClientError as exc:  # AWS names the region on a 301/400/403 as well
            headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        if region := headers.get("x-amz-bucket-region"):
            return region
        try:
            constraint = lookup.get_bucket_location(Bucket=bucket).get("LocationConstraint")
            return {"EU": "eu-west-1"}.get(constraint, constraint) or DEFAULT_REGION
        except ClientError as exc:
            log.info(
                "S3 endpoint %s names no region for bucket %r (%s); using %s",
                endpoint_url,
                bucket,
                exc,
                DEFAULT_REGION,
            )
            return DEFAULT_REGION
    except BotoCoreError as exc:
        raise OSError(
            f"cannot ask the S3 endpoint {endpoint_url} for the region of bucket {bucket!r}: "
            f"{exc}. Check --s3-endpoint-url / $AWS_ENDPOINT_URL, or set $AWS_REGION to skip "
            "the lookup"
        ) from exc


def filesystem_options(endpoint_url: str | None, region: str) -> dict[str, Any]:
    """Keyword arguments of `pyarrow.fs.S3FileSystem` under this policy (see the module's
    docstring); ``endpoint_url`` is ``scheme://host[:port]`` or None for AWS."""
    options: dict[str, Any] = {
        "region": region,
        # pyarrow's name; for this strategy the SDK counts retries (DefaultRetryStrategy)
        "retry_strategy": pafs.AwsDefaultS3RetryStrategy(max_attempts=MAX_RETRIES),
        "connect_timeout": CONNECT_TIMEOUT_S,
        "request_timeout": REQUEST_TIMEOUT_S,
        "allow_delayed_open": True,
    }
    if endpoint_url:
        scheme, _, host = endpoint_url.rpartition("://")
        options["endpoint_override"] = host.rstrip("/")
        options["scheme"] = scheme or "https"
    return options


class PolicyS3FileSystem(pafs.S3FileSystem):
    """A `pyarrow.fs.S3FileSystem` under this policy that stays under it when pickled (to a Ray
    worker): it is rebuilt from (endpoint, region), so retries and timeouts travel with it, and
    credentials never do (each node reads its own AWS chain)."""

    def __init__(self, endpoint_url: str | None, region: str) -> None:
        super().__init__(**filesystem_options(endpoint_url, region))
        self.endpoint_url = endpoint_url

    def __reduce__(self) -> tuple[Any, tuple[str | None, str]]:
        return type(self), (self.endpoint_url, self.region)


def filesystem(endpoint_url: str | None, region: str) -> PolicyS3FileSystem:
    """A new S3 filesystem for ``endpoint_url`` (None: AWS) signing for ``region``."""
    return PolicyS3FileSystem(endpoint_url, region)
