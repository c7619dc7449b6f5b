"""Shared fixtures: real local services (S3 endpoint, MLflow store) on loopback only, and the
`slow` mark of every test outside tests/unit/.

Servers that one folder needs start in that folder's conftest with scope="package", so they
live only while that folder's tests run: the local Ray in tests/integration/, the Ray head and
MLflow server in tests/e2e/, the simulated cluster in tests/cluster/.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
SLOW_FOLDERS = ("integration", "e2e", "cluster")
"""Folders whose every test is `slow` (local Ray, servers, jobs): the fast tier,
`pytest -m "not slow"`, runs tests/unit/ without its few marked slow tests."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under SLOW_FOLDERS, and every integration / e2e / cluster test, `slow`."""
    slow_roots = [TESTS / name for name in SLOW_FOLDERS]
    for item in items:
        path = item.path.resolve()
        marked = any(item.get_closest_marker(name) for name in SLOW_FOLDERS)
        if marked or any(root in path.parents for root in slow_roots):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 (a random port); AWS env vars point boto3 and the jobs at it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in _S3_ENV}
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
        }
    )
    try:
        yield endpoint
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


_S3_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
)


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A fresh, empty bucket on the local S3 server."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


def upload_tree(local_root: Path, bucket: str, prefix: str, endpoint: str) -> str:
    """Copy a local folder into s3://bucket/prefix; returns the s3:// URI."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    for path in sorted(Path(local_root).rglob("*")):
        if path.is_file():
            key = f"{prefix}/{path.relative_to(local_root).as_posix()}"
            client.upload_file(str(path), bucket, key)
    return f"s3://{bucket}/{prefix}"


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch):
    """A fresh sqlite MLflow store, exported as MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    try:
        import mlflow

        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
    except ImportError:
        pass
    return uri


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A small generated labelled data set (images/, masks/, classes.json)."""
    from unet_core.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_dataset(root, num_images=16, size=64, seed=0)
    return root
