"""The S3 client policy (jobs/common/s3.py): retries and timeouts on every filesystem, kept
through pickling, and which region a bucket is signed for. No network: lookups are faked."""

from __future__ import annotations

import pickle

import pyarrow.fs as pafs
import pytest

from jobs.common import fs, s3


@pytest.fixture(autouse=True)
def no_region_env(monkeypatch):
    """No region from the environment, and no lookup remembered from another test."""
    for key in s3.REGION_ENV:
        monkeypatch.delenv(key, raising=False)
    s3._looked_up_region.cache_clear()
    yield
    s3._looked_up_region.cache_clear()


@pytest.fixture
def lookups(monkeypatch):
    """Fake region lookups: AWS (pyarrow) says ap-south-1, a custom endpoint eu-west-1;
    returns the calls made, as (where, bucket)."""
    calls: list[tuple[str, str]] = []

    def on_aws(bucket: str) -> str:
        calls.append(("aws", bucket))
        return "ap-south-1"

    def on_endpoint(endpoint_url: str, bucket: str) -> str:
        calls.append((endpoint_url, bucket))
        return "eu-west-1"

    monkeypatch.setattr(s3.pafs, "resolve_s3_region", on_aws)
    monkeypatch.setattr(s3, "_endpoint_region", on_endpoint)
    return calls


def _pyarrow_options(filesystem: pafs.S3FileSystem) -> dict:
    """The options pyarrow itself reports for a filesystem (what its own pickling keeps)."""
    return pafs.S3FileSystem.__reduce__(filesystem)[1][0]


def test_options_set_retries_and_timeouts():
    options = s3.filesystem_options(None, "eu-west-1")
    assert isinstance(options["retry_strategy"], pafs.AwsDefaultS3RetryStrategy)
    assert options["retry_strategy"].max_attempts == s3.MAX_RETRIES > 3  # pyarrow's default: 3
    assert options["connect_timeout"] == s3.CONNECT_TIMEOUT_S
    assert options["request_timeout"] == s3.REQUEST_TIMEOUT_S
    assert options["allow_delayed_open"] is True  # a small write: one PUT, not a multipart
    assert options["region"] == "eu-west-1" and "endpoint_override" not in options


@pytest.mark.parametrize(
    ("endpoint", "host", "scheme"),
    [("http://127.0.0.1:9000/", "127.0.0.1:9000", "http"), ("minio:9000", "minio:9000", "https")],
)
def test_options_split_an_endpoint(endpoint, host, scheme):
    options = s3.filesystem_options(endpoint, "us-east-1")
    assert (options["endpoint_override"], options["scheme"]) == (host, scheme)


def test_filesystem_is_built_under_the_policy():
    built = s3.filesystem("http://127.0.0.1:9000", "eu-west-1")
    got = _pyarrow_options(built)
    assert isinstance(built, pafs.S3FileSystem) and built.region == "eu-west-1"
    assert (got["endpoint_override"], got["scheme"]) == ("127.0.0.1:9000", "http")
    assert (got["connect_timeout"], got["request_timeout"], got["allow_delayed_open"]) == (
        s3.CONNECT_TIMEOUT_S,
        s3.REQUEST_TIMEOUT_S,
        True,
    )


def test_pickled_filesystem_is_rebuilt_under_the_policy():
    """pyarrow's own pickling drops the retry strategy; ours rebuilds through `filesystem`."""
    built = s3.filesystem("http://127.0.0.1:9000", "eu-west-1")
    again = pickle.loads(pickle.dumps(built))
    assert type(again) is s3.PolicyS3FileSystem
    assert (again.endpoint_url, again.region) == ("http://127.0.0.1:9000", "eu-west-1")
    assert _pyarrow_options(again) == _pyarrow_options(built)
    assert _pyarrow_options(again)["access_key"] is None  # credentials never travel


def test_boto3_client_under_the_same_policy():
    client = s3.client("http://127.0.0.1:9000", "eu-west-1")
    assert client.meta.config.retries == {
        "mode": "standard",
        "total_max_attempts": s3.MAX_RETRIES + 1,
    }
    assert (client.meta.config.connect_timeout, client.meta.config.read_timeout) == (
        s3.CONNECT_TIMEOUT_S,
        s3.REQUEST_TIMEOUT_S,
    )
    assert (client.meta.region_name, client.meta.endpoint_url) == (
        "eu-west-1",
        "http://127.0.0.1:9000",
    )


def test_aws_region_wins_over_default_region_and_lookup(monkeypatch, lookups):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    assert s3.bucket_region("bkt", None) == "us-west-2"
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    assert s3.bucket_region("bkt", "http://127.0.0.1:9000") == "eu-central-1"
    assert lookups == []


def test_empty_region_env_is_not_a_region(monkeypatch, lookups):
    monkeypatch.setenv("AWS_REGION", "")
    assert s3.bucket_region("bkt", None) == "ap-south-1"


def test_lookup_per_endpoint_and_bucket_once(lookups):
    assert s3.bucket_region("bkt", None) == "ap-south-1"
    assert s3.bucket_region("bkt", "") == "ap-south-1"  # no endpoint: AWS
    assert s3.bucket_region("bkt", "http://127.0.0.1:9000") == "eu-west-1"
    assert s3.bucket_region("other", "http://127.0.0.1:9000") == "eu-west-1"
    for _ in range(3):
        s3.bucket_region("bkt", "http://127.0.0.1:9000")
    assert lookups == [
        ("aws", "bkt"),
        ("http://127.0.0.1:9000", "bkt"),
        ("http://127.0.0.1:9000", "other"),
    ]


def test_failed_aws_lookup_names_the_fix_and_is_tried_again(monkeypatch):
    calls = []

    def unknown(bucket: str) -> str:
        calls.append(bucket)
        raise OSError("Bucket 'nope' not found")

    monkeypatch.setattr(s3.pafs, "resolve_s3_region", unknown)
    for _ in range(2):
        with pytest.raises(OSError, match=r"bucket 'nope'.*AWS_REGION"):
            s3.bucket_region("nope", None)
    assert calls == ["nope", "nope"]


def test_resolve_signs_for_the_buckets_region(monkeypatch, lookups):
    endpoint = "http://127.0.0.1:9000"
    filesystem, path = fs.resolve("s3://bkt/some/prefix/", endpoint_url=endpoint)
    assert path == "bkt/some/prefix" and filesystem.region == "eu-west-1"
    assert isinstance(filesystem, s3.PolicyS3FileSystem)
    assert fs.resolve("s3://bkt/x", endpoint_url=endpoint)[0] is filesystem  # cached
    assert lookups == [(endpoint, "bkt")]
    monkeypatch.setenv("AWS_REGION", "us-west-1")
    assert fs.resolve("s3://bkt/x", endpoint_url=endpoint)[0].region == "us-west-1"


def test_s3_filesystem_without_a_bucket(monkeypatch, lookups):
    assert fs.s3_filesystem("http://127.0.0.1:9000").region == s3.DEFAULT_REGION
    monkeypatch.setenv("AWS_DEFAULT_REGION", "sa-east-1")
    assert fs.s3_filesystem("http://127.0.0.1:9000").region == "sa-east-1"
    assert lookups == []
