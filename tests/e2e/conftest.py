"""Real servers for the end-to-end tests, all on 127.0.0.1, one set for the tests of this folder
(scope="package": stopped after its last test, not at the end of the whole session).

- S3: the moto server of the root conftest (`s3_endpoint`), with a bucket holding a small
  labelled data set and a prefix of unlabelled images.
- MLflow: `python -m mlflow server --app-name basic-auth` with a sqlite backend, artifacts
  proxied to the bucket (`--artifacts-destination s3://...`) and an admin password made for
  this session, as cluster/mlflow_server.md runs it; the jobs log in with the runtime_env's
  MLFLOW_TRACKING_USERNAME/PASSWORD.
- Ray: `ray start --head --block` with token authentication, its own HOME (so ~/.ray/auth_token
  is this session's token, not the machine's) and its own temp dir.

Jobs go in through the CLI a user types (`ray job submit --working-dir . --runtime-env ...`).
Every server runs in its own process group and is stopped in a `finally`, also when a test
fails; nothing is stopped by name (`ray stop` would kill every Ray on the machine).
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
import yaml

from tests.conftest import upload_tree
from tests.servers import (
    LOOPBACK,
    VENV_BIN,
    JobRun,
    child_env,
    free_port,
    serving,
)
from tests.support import REPO_ROOT, missing

RUNTIME_ENV_FILE = REPO_ROOT / "cluster" / "runtime_env.yaml"


@pytest.fixture(scope="package")
def e2e_tmp() -> Iterator[Path]:
    """A short private folder (Ray's socket paths must stay under ~100 characters)."""
    root = Path(tempfile.mkdtemp(prefix="unet-e2e-", dir="/tmp"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- S3 -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Store:
    endpoint: str
    bucket: str
    labelled_uri: str
    unlabelled_uri: str
    unlabelled_images: tuple[str, ...]
    """Paths of the unlabelled images relative to unlabelled_uri."""
    env: dict[str, str]
    """AWS_* settings that reach this endpoint with boto3 and the project's pyarrow factory."""

    def keys(self, prefix: str) -> list[str]:
        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint)
        keys: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        ):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return keys

    def read(self, key: str) -> bytes:
        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint)
        return client.get_object(Bucket=self.bucket, Key=key)["Body"].read()


@pytest.fixture(scope="package")
def e2e_s3(s3_endpoint: str, e2e_tmp: Path) -> S3Store:
    """A bucket with a labelled set (10 images, 64 px) and 6 unlabelled images, one level nested."""
    import boto3

    from unet_core.synthetic import make_synthetic_dataset

    bucket = f"unet-e2e-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)

    labelled = e2e_tmp / "labelled"
    make_synthetic_dataset(labelled, num_images=10, size=64, seed=0)
    labelled_uri = upload_tree(labelled, bucket, "datasets/labelled", s3_endpoint)

    unlabelled = e2e_tmp / "unlabelled-src"
    make_synthetic_dataset(unlabelled, num_images=6, size=64, seed=1)
    sources = sorted((unlabelled / "images").glob("*.png"))
    staged = e2e_tmp / "unlabelled"
    names = []
    for i, src in enumerate(sources):
        rel = f"{'a' if i % 2 else 'b'}/{src.name}"  # nested: masks must keep relative paths
        (staged / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, staged / rel)
        names.append(rel)
    unlabelled_uri = upload_tree(staged, bucket, "images/unlabelled", s3_endpoint)

    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_endpoint,
    }
    return S3Store(s3_endpoint, bucket, labelled_uri, unlabelled_uri, tuple(sorted(names)), env)


# --- MLflow ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MlflowServer:
    url: str
    username: str
    """The basic-auth admin (created by the server on its first start)."""
    password: str = field(repr=False)
    """The admin's password, made for this session."""
    auth_config: Path
    """The server's basic_auth.ini (MLFLOW_AUTH_CONFIG_PATH): default_permission and so on."""
    artifacts_prefix: str
    """Key prefix in the bucket under which the server stores artifacts."""

    @property
    def client_env(self) -> dict[str, str]:
        """What a job (or a user) sets to reach the server as the admin."""
        return {
            "MLFLOW_TRACKING_URI": self.url,
            "MLFLOW_TRACKING_USERNAME": self.username,
            "MLFLOW_TRACKING_PASSWORD": self.password,
        }


def require_basic_auth() -> None:
    """Fail (never skip) when MLflow's basic-auth app cannot run: it needs Flask-WTF."""
    if importlib.util.find_spec("flask_wtf") is None:
        pytest.fail(
            f"`mlflow server --app-name basic-auth` needs the mlflow[auth] extra (Flask-WTF), "
            f"which {sys.executable} lacks: install the dev extra, "
            f"`{VENV_BIN / 'pip'} install -e '.[dev]'`"
        )


@pytest.fixture(scope="package")
def mlflow_server(e2e_tmp: Path, e2e_s3: S3Store) -> Iterator[MlflowServer]:
    """`mlflow server --app-name basic-auth` with a sqlite backend and artifacts proxied to the
    bucket. The server creates the admin on its first start with MLFLOW_AUTH_ADMIN_PASSWORD (a
    fresh one per session: MLflow 3.17 ships no default and refuses the old `password1234`);
    the jobs authenticate with the runtime_env's MLFLOW_TRACKING_USERNAME/PASSWORD, as on a
    team server."""
    require_basic_auth()
    root = e2e_tmp / "mlflow"
    root.mkdir()
    port = free_port()
    password = secrets.token_urlsafe(16)
    auth_ini = root / "basic_auth.ini"
    auth_ini.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{root / 'basic_auth.db'}\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    env = child_env(
        **e2e_s3.env,
        MLFLOW_S3_ENDPOINT_URL=e2e_s3.endpoint,
        MLFLOW_AUTH_CONFIG_PATH=str(auth_ini),
        MLFLOW_AUTH_ADMIN_PASSWORD=password,
        MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16),
        # No server-side job runner (seven huey consumer processes, for GenAI features).
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
    )
    cmd = [
        str(VENV_BIN / "python"), "-m", "mlflow", "server",
        "--host", LOOPBACK,
        "--port", str(port),
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--serve-artifacts",
        "--artifacts-destination", f"s3://{e2e_s3.bucket}/mlartifacts",
        "--workers", "1",
        "--app-name", "basic-auth",
    ]  # fmt: skip
    url = f"http://{LOOPBACK}:{port}"
    with serving(
        cmd,
        cwd=root,
        env=env,
        log=root / "server.log",
        ready=lambda: requests.get(f"{url}/health", timeout=2).status_code == 200,
        what="mlflow server",
        timeout=90,
        marker=str(root),
    ):
        yield MlflowServer(url, "admin", password, auth_ini, "mlartifacts/")


@pytest.fixture(scope="package")
def mlflow_client(mlflow_server: MlflowServer) -> Iterator:
    """An MlflowClient of the server, logged in as the admin (basic auth reads the env)."""
    from mlflow import MlflowClient

    saved = {k: os.environ.get(k) for k in mlflow_server.client_env}
    os.environ.update(mlflow_server.client_env)
    try:
        yield MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# --- Ray ------------------------------------------------------------------------------------


@dataclass
class RayHead:
    dashboard_url: str
    home: Path
    """HOME of the head and of the CLI: ~/.ray/auth_token there is the cluster's token."""
    token: str
    env: dict[str, str] = field(repr=False)
    """Environment of a user with the token configured (RAY_AUTH_MODE=token, this HOME)."""

    def submit(
        self,
        entrypoint: list[str],
        *,
        runtime_env: Path,
        env: dict[str, str] | None = None,
        timeout: float = 600,
    ) -> JobRun:
        """`ray job submit --working-dir . --runtime-env FILE -- ENTRYPOINT` from the repo root."""
        cmd = [
            str(VENV_BIN / "ray"), "job", "submit",
            "--address", self.dashboard_url,
            "--working-dir", ".",
            "--runtime-env", str(runtime_env),
            "--", *entrypoint,
        ]  # fmt: skip
        return JobRun.run(cmd, cwd=REPO_ROOT, env=self.env if env is None else env, timeout=timeout)

    def jobs(self) -> list[dict]:
        """The cluster's jobs, from the job REST API (with the token)."""
        response = requests.get(
            f"{self.dashboard_url}/api/jobs/",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=10,
        )
        response.raise_for_status()
        return response.json()


@pytest.fixture(scope="package")
def ray_head(e2e_tmp: Path, e2e_s3: S3Store) -> Iterator[RayHead]:
    """`ray start --head --block` on loopback with token authentication (RAY_AUTH_MODE=token and
    a token in this session's ~/.ray/auth_token), 8 logical CPUs, dashboard on 127.0.0.1."""
    if not (VENV_BIN / "ray").exists():
        missing(f"no `ray` CLI beside {sys.executable}: run pytest from the project's venv")
    home = e2e_tmp / "home"
    (home / ".ray").mkdir(parents=True)
    token = secrets.token_hex(32)
    token_file = home / ".ray" / "auth_token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    temp_dir = e2e_tmp / "ray"
    temp_dir.mkdir()

    ports = {
        "port": free_port(),
        "dashboard-port": free_port(),
        "ray-client-server-port": free_port(),
        "dashboard-agent-listen-port": free_port(),
        "dashboard-agent-grpc-port": free_port(),
        "runtime-env-agent-port": free_port(),
        "metrics-export-port": free_port(),
        "node-manager-port": free_port(),
        "object-manager-port": free_port(),
    }
    # The head's processes (job drivers, Ray workers) inherit this environment: the project's
    # python on PATH, and the S3 endpoint so that nothing can reach a real AWS endpoint even if
    # a job's runtime_env lacked it. MLflow settings come only through the runtime_env.
    env = child_env(HOME=str(home), RAY_AUTH_MODE="token", **e2e_s3.env)
    cmd = [
        str(VENV_BIN / "ray"), "start", "--head", "--block",
        f"--node-ip-address={LOOPBACK}",
        f"--dashboard-host={LOOPBACK}",
        "--include-dashboard=true",
        "--num-cpus=8",
        "--num-gpus=0",
        "--object-store-memory=300000000",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
        *(f"--{name}={port}" for name, port in ports.items()),
    ]  # fmt: skip
    url = f"http://{LOOPBACK}:{ports['dashboard-port']}"
    headers = {"Authorization": f"Bearer {token}"}
    # Ray workers rename themselves (ray::IDLE) but inherit HOME: the marker finds them.
    with serving(
        cmd,
        cwd=e2e_tmp,
        env=env,
        log=e2e_tmp / "ray-head.log",
        ready=lambda: (
            requests.get(f"{url}/api/jobs/", headers=headers, timeout=2).status_code == 200
        ),
        what="ray head",
        timeout=120,
        marker=str(home),
    ):
        yield RayHead(url, home, token, env)


@pytest.fixture(scope="package")
def job_runtime_env(e2e_tmp: Path, mlflow_server: MlflowServer, e2e_s3: S3Store) -> Path:
    """cluster/runtime_env.yaml as shipped, plus what a user adds in a private copy: the
    MLflow server and its credentials, and the S3 endpoint and keys."""
    runtime_env = yaml.safe_load(RUNTIME_ENV_FILE.read_text())
    runtime_env.setdefault("env_vars", {}).update(
        {
            **mlflow_server.client_env,
            **e2e_s3.env,
            "AWS_EC2_METADATA_DISABLED": "true",
            "DO_NOT_TRACK": "true",
            "UNET_RAY_CACHE": str(e2e_tmp / "cache"),
        }
    )
    path = e2e_tmp / "runtime_env.e2e.yaml"  # outside the repository: never part of the upload
    path.write_text(yaml.safe_dump(runtime_env, sort_keys=False))
    return path
