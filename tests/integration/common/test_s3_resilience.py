"""The S3 policy (jobs/common/s3.py) against a real local S3 server (moto): a bucket in another
region is found with no region set, and throttling (503 SlowDown, 500) from a proxy in front
of the server is ridden out by listing, reading, writing and a whole segment job."""

from __future__ import annotations

import os
import pickle
import uuid
from concurrent.futures import ThreadPoolExecutor

import pyarrow.fs as pafs
import pytest

from jobs import segment
from jobs.common import fs, s3
from tests.conftest import upload_tree
from tests.integration.inference.helpers import make_checkpoint, register_checkpoint, run_main
from tests.s3_proxy import FORWARDED, INTERNAL_ERROR, SLOWDOWN, WRONG_REGION, ThrottlingS3Proxy
from unet_core.classes import ClassMap

pytestmark = pytest.mark.integration

OBJECT_BYTES = 1024
"""Size of the test objects: more than an S3 error body. A throttled GET of a smaller object
fails in pyarrow without a retry (see "Not covered" in jobs/common/s3.py)."""


def _new_bucket(endpoint: str, region: str) -> str:
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name=region)
    if region == "us-east-1":
        client.create_bucket(Bucket=name)
    else:
        client.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": region})
    return name


def _payloads(n: int) -> dict[str, bytes]:
    return {f"set/{i % 7}/obj-{i:04d}.bin": os.urandom(OBJECT_BYTES) for i in range(n)}


def _write_all(root: str, payloads: dict[str, bytes], endpoint: str) -> None:
    filesystem, base = fs.resolve(root, endpoint_url=endpoint)
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda rel: fs.write_bytes_atomic(filesystem, f"{base}/{rel}", payloads[rel]),
                payloads,
            )
        )


def _read_all(root: str, rels: list[str], endpoint: str) -> dict[str, bytes]:
    with ThreadPoolExecutor(8) as pool:
        blobs = pool.map(lambda rel: fs.read_bytes(f"{root}/{rel}", endpoint_url=endpoint), rels)
        return dict(zip(rels, blobs, strict=True))


@pytest.fixture
def no_region_env(monkeypatch):
    """Neither AWS_REGION nor AWS_DEFAULT_REGION: the region must come from the bucket."""
    for key in s3.REGION_ENV:
        monkeypatch.delenv(key, raising=False)


def test_bucket_region_read_from_the_endpoint(s3_endpoint, no_region_env):
    eu, us = _new_bucket(s3_endpoint, "eu-west-1"), _new_bucket(s3_endpoint, "us-east-1")
    assert s3.bucket_region(eu, s3_endpoint) == "eu-west-1"
    assert s3.bucket_region(us, s3_endpoint) == "us-east-1"
    # A bucket the endpoint does not know: it names no region, so S3's default.
    assert s3.bucket_region(f"missing-{uuid.uuid4().hex[:8]}", s3_endpoint) == s3.DEFAULT_REGION


def test_bucket_in_another_region_works_without_a_region_set(s3_endpoint, no_region_env):
    """Through a proxy that, as AWS does, refuses requests signed for the wrong region."""
    bucket = _new_bucket(s3_endpoint, "eu-west-1")
    with ThrottlingS3Proxy(s3_endpoint, bucket_regions={bucket: "eu-west-1"}) as proxy:
        assert s3.bucket_region(bucket, proxy.url) == "eu-west-1"
        root = f"s3://{bucket}/data"
        filesystem, _ = fs.resolve(root, endpoint_url=proxy.url)
        assert filesystem.region == "eu-west-1"
        payloads = _payloads(12)
        _write_all(root, payloads, proxy.url)
        assert fs.list_files(root, endpoint_url=proxy.url) == sorted(payloads)
        assert _read_all(root, sorted(payloads), proxy.url) == payloads
        signed_right = proxy.counts[FORWARDED]
        # The control: what a client signing for the default region gets from this proxy.
        with pytest.raises(OSError):
            s3.filesystem(proxy.url, "us-east-1").get_file_info(f"{bucket}/data/{min(payloads)}")
    assert signed_right > 2 * len(payloads)
    assert proxy.counts[WRONG_REGION] >= 1  # the control (and perhaps the lookup's first try)


def test_throttled_listing_reading_and_writing_succeed(s3_endpoint, s3_bucket):
    """300 objects through a proxy that answers 150 requests with 503 SlowDown or 500, each
    up to 3 times (as many attempts as pyarrow's default makes): more retries than the SDK's
    standard strategy allows one filesystem in its lifetime."""
    payloads = _payloads(300)
    root = f"s3://{s3_bucket}/throttled"
    with ThrottlingS3Proxy(s3_endpoint, refuse=150, per_request=2, internal_error_every=5) as proxy:
        _write_all(root, payloads, proxy.url)
        assert fs.list_files(root, endpoint_url=proxy.url) == sorted(payloads)
        assert _read_all(root, sorted(payloads), proxy.url) == payloads
    assert proxy.refused == 150, proxy.counts  # every refusal was answered, and ridden out
    assert proxy.counts[SLOWDOWN] == 120 and proxy.counts[INTERNAL_ERROR] == 30


def test_pickled_filesystem_keeps_its_retries(s3_endpoint, s3_bucket):
    """Four refusals per request: more than pyarrow's default 3 attempts can take. A filesystem
    that went through pickle (as Ray Train's storage filesystem does) still gets through."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    data = os.urandom(OBJECT_BYTES)
    for key in ("pickled/theirs.bin", "pickled/ours.bin"):  # one each: refusals are per request
        client.put_object(Bucket=s3_bucket, Key=key, Body=data)
    with ThrottlingS3Proxy(s3_endpoint, refuse=100, per_request=4) as proxy:
        host = proxy.url.split("://", 1)[1]
        pyarrow_default = pafs.S3FileSystem(
            region="us-east-1", endpoint_override=host, scheme="http"
        )
        with pytest.raises(OSError, match="503"):
            pyarrow_default.get_file_info(f"{s3_bucket}/pickled/theirs.bin")
        ours = pickle.loads(pickle.dumps(s3.filesystem(proxy.url, "us-east-1")))
        with ours.open_input_stream(f"{s3_bucket}/pickled/ours.bin") as f:
            assert f.read() == data
    assert proxy.refused == 3 + 4 + 4, proxy.counts  # pyarrow's 3 attempts; ours: HEAD, GET


def test_segment_job_through_a_throttling_endpoint(
    tmp_path, ray_local, mlflow_uri, s3_endpoint, s3_bucket, synthetic_root, capsys
):
    """jobs/segment.py with --s3-endpoint-url at a proxy refusing its first 20 requests, each
    of them up to 3 times: as many attempts as pyarrow's default retries make."""
    import boto3

    class_map = ClassMap.from_file(synthetic_root / "classes.json")
    register_checkpoint(make_checkpoint(tmp_path / "unet.pt", class_map), tmp_path / "art")
    images = sorted((synthetic_root / "images").glob("*.png"))
    source = upload_tree(synthetic_root / "images", s3_bucket, "raw/images", s3_endpoint)
    out = f"s3://{s3_bucket}/results/throttled"
    with ThrottlingS3Proxy(s3_endpoint, refuse=20, per_request=3, internal_error_every=5) as proxy:
        code, summary = run_main(
            segment.main,
            [
                "--input",
                source,
                "--output",
                out,
                "--model",
                "models:/unet@champion",
                "--s3-endpoint-url",
                proxy.url,
                "--batch-size",
                4,
            ],
            capsys,
        )
    assert proxy.refused == 20, proxy.counts
    assert code == 0, summary
    n = len(images)
    assert (summary["total"], summary["ok"], summary["failed"]) == (n, n, 0), summary
    pages = (
        boto3.client("s3", endpoint_url=s3_endpoint)
        .get_paginator("list_objects_v2")
        .paginate(Bucket=s3_bucket, Prefix="results/throttled/masks/")
    )
    masks = sorted(o["Key"].rsplit("/", 1)[1] for page in pages for o in page.get("Contents", []))
    assert masks == sorted(p.name for p in images)
