"""Basic auth on the session's `mlflow server --app-name basic-auth` (tests/e2e/conftest.py):
who gets in, and what a user who was granted nothing may do. Plain HTTP on 127.0.0.1 and
MlflowClient, as a job or a user sees the server; no Ray.
"""

from __future__ import annotations

import base64
import configparser
import json
import secrets
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tests.e2e.conftest import MlflowServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SEARCH = "/api/2.0/mlflow/experiments/search?max_results=5"
CREDENTIAL_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
# The loopback server, never through a proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    """Lower-case names."""
    text: str

    def json(self) -> dict:
        return json.loads(self.text)


def call(
    server: MlflowServer,
    path: str,
    *,
    auth: tuple[str, str] | None = None,
    body: dict | None = None,
) -> Reply:
    """GET (or POST ``body`` as JSON) ``path`` on the server, with basic auth if given."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{server.url}{path}", data=data)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with _OPENER.open(request, timeout=30) as response:
            return Reply(response.status, _lower(response.headers), response.read().decode())
    except urllib.error.HTTPError as error:
        return Reply(error.code, _lower(error.headers), error.read().decode())


def _lower(headers) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def admin(server: MlflowServer) -> tuple[str, str]:
    return server.username, server.password


def client_as(monkeypatch, server: MlflowServer, auth: tuple[str, str] | None) -> MlflowClient:
    """An MlflowClient that sends ``auth`` (None: no credentials), read from the environment
    as the jobs read theirs."""
    for name in CREDENTIAL_VARS:
        monkeypatch.delenv(name, raising=False)
    if auth is not None:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", auth[0])
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", auth[1])
    return MlflowClient(tracking_uri=server.url)


def test_a_request_without_credentials_is_refused(mlflow_server: MlflowServer, monkeypatch):
    # The server is up (/health is open): the refusal below is the auth app's.
    assert call(mlflow_server, "/health").status == 200

    reply = call(mlflow_server, SEARCH)
    assert reply.status == 401, reply
    assert reply.headers.get("www-authenticate") == 'Basic realm="mlflow"', reply.headers

    with pytest.raises(MlflowException, match="401"):
        client_as(monkeypatch, mlflow_server, None).search_experiments()


def test_a_wrong_password_or_user_is_refused(mlflow_server: MlflowServer, monkeypatch):
    for auth in [
        (mlflow_server.username, mlflow_server.password + "x"),
        (mlflow_server.username, "password1234"),  # the default of MLflow < 3.17: refused
        (f"nobody-{uuid.uuid4().hex[:6]}", mlflow_server.password),
    ]:
        reply = call(mlflow_server, SEARCH, auth=auth)
        assert reply.status == 401, (auth[0], reply)

    wrong = (mlflow_server.username, mlflow_server.password[::-1])
    with pytest.raises(MlflowException, match="401"):
        client_as(monkeypatch, mlflow_server, wrong).search_experiments()


def test_the_admin_credentials_work(mlflow_server: MlflowServer, monkeypatch):
    reply = call(mlflow_server, SEARCH, auth=admin(mlflow_server))
    assert reply.status == 200, reply
    assert "experiments" in reply.json(), reply  # at least MLflow's "Default"

    me = call(mlflow_server, "/api/2.0/mlflow/users/current", auth=admin(mlflow_server))
    assert me.status == 200, me
    assert me.json()["user"]["username"] == mlflow_server.username, me
    assert me.json()["user"]["is_admin"] is True, me

    client = client_as(monkeypatch, mlflow_server, admin(mlflow_server))
    names = {experiment.name for experiment in client.search_experiments()}
    assert "Default" in names, names


def test_a_user_without_a_grant_can_read_but_not_write(mlflow_server: MlflowServer, monkeypatch):
    ini = configparser.ConfigParser()
    ini.read(mlflow_server.auth_config)
    default_permission = ini["mlflow"]["default_permission"]
    # What a user gets on an experiment nobody granted them: READ (cluster/mlflow_server.md).
    assert default_permission == "READ", f"{mlflow_server.auth_config}: {default_permission}"

    suffix = uuid.uuid4().hex[:8]
    created = call(
        mlflow_server,
        "/api/2.0/mlflow/experiments/create",
        auth=admin(mlflow_server),
        body={"name": f"auth-private-{suffix}"},
    )
    assert created.status == 200, created
    experiment_id = created.json()["experiment_id"]

    user = (f"reader-{suffix}", secrets.token_urlsafe(16))
    made = call(
        mlflow_server,
        "/api/2.0/mlflow/users/create",
        auth=admin(mlflow_server),
        body={"username": user[0], "password": user[1]},
    )
    assert made.status == 200, made
    assert made.json()["user"]["is_admin"] is False, made

    # The server resolves the user's permission on the experiment to the ini's default.
    grant_query = f"username={user[0]}&resource_type=experiment&resource_id={experiment_id}"
    resolved = call(
        mlflow_server,
        f"/api/3.0/mlflow/users/permissions/get?{grant_query}",
        auth=admin(mlflow_server),
    )
    assert resolved.status == 200, resolved
    assert resolved.json()["permission"] == default_permission, resolved

    # READ: the experiment can be read ...
    read = call(
        mlflow_server,
        f"/api/2.0/mlflow/experiments/get?experiment_id={experiment_id}",
        auth=user,
    )
    assert read.status == 200, read
    assert read.json()["experiment"]["name"] == f"auth-private-{suffix}"

    # ... but not written: neither a tag over REST nor a run through MlflowClient.
    tag = {"experiment_id": experiment_id, "key": "owner", "value": user[0]}
    refused = call(
        mlflow_server, "/api/2.0/mlflow/experiments/set-experiment-tag", auth=user, body=tag
    )
    assert refused.status == 403, refused
    with pytest.raises(MlflowException, match="PERMISSION_DENIED|403"):
        client_as(monkeypatch, mlflow_server, user).create_run(experiment_id)
    other = {"username": f"other-{suffix}", "password": secrets.token_urlsafe(16)}
    made_by_user = call(mlflow_server, "/api/2.0/mlflow/users/create", auth=user, body=other)
    assert made_by_user.status == 403, made_by_user  # only an admin creates users

    admin_client = client_as(monkeypatch, mlflow_server, admin(mlflow_server))
    assert "owner" not in admin_client.get_experiment(experiment_id).tags
    assert admin_client.search_runs([experiment_id]) == []

    # Granted EDIT through the auth API, the same request goes through.
    granted = call(
        mlflow_server,
        "/api/3.0/mlflow/users/permissions/grant",
        auth=admin(mlflow_server),
        body={
            "username": user[0],
            "resource_type": "experiment",
            "resource_id": experiment_id,
            "permission": "EDIT",
        },
    )
    assert granted.status == 200, granted
    written = call(
        mlflow_server, "/api/2.0/mlflow/experiments/set-experiment-tag", auth=user, body=tag
    )
    assert written.status == 200, written
    assert admin_client.get_experiment(experiment_id).tags["owner"] == user[0]
