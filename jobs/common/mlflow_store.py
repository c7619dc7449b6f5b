"""Where the MLflow store is, for every job: tracking and registry URIs, a client, key names.

Workers and later runs may have another working directory, and they do not inherit MLFLOW_*
variables from the driver: the driver resolves the URI once (a relative sqlite path made
absolute) and hands it on explicitly.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-.]")


class TrackingUriError(ValueError):
    """A tracking URI that MLflow cannot use: a bare path, or a server that does not answer."""

    exit_kind = "tracking"  # a job ends with exit code 2 (jobs.common.exits)


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The flag, else $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db; sqlite paths made
    absolute so that workers (another working directory) open the same file."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = uri[len("sqlite:///") :]
        uri = f"sqlite:///{Path(path).expanduser().resolve()}"
    elif "://" not in uri:  # a bare folder is the (refused) file store: say so early
        raise TrackingUriError(
            f"tracking URI {uri!r} is a path; MLflow 3 needs a database or server URI, e.g. "
            f"sqlite:///{Path(uri).resolve()}.db or http://host:5000"
        )
    return uri


def reachable_tracking_uri(uri: str | None = None) -> str:
    """`resolve_tracking_uri`, refused at once (`TrackingUriError`) when it names a server
    that does not answer, rather than after MLflow's minutes of retries."""
    resolved = resolve_tracking_uri(uri)
    problem = tracking_problem(resolved)
    if problem:
        raise TrackingUriError(f"{problem}: start it or pass another --tracking-uri")
    return resolved


def registry_uri(tracking_uri: str | None, resolved: str) -> str:
    """$MLFLOW_REGISTRY_URI unless a tracking URI was given explicitly, else the tracking URI."""
    registry = os.environ.get("MLFLOW_REGISTRY_URI") if not tracking_uri else None
    return registry or resolved


def mlflow_client(tracking_uri: str | None = None):
    """(MlflowClient, resolved tracking URI) with the registry of `registry_uri`."""
    from mlflow import MlflowClient

    tracking = reachable_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking, registry_uri=registry_uri(tracking_uri, tracking))
    return client, tracking


def metric_name(text: str) -> str:
    """A name (a class name may hold any character) made safe as part of an MLflow metric or
    tag key: anything but letters, digits, '_', '-' and '.' becomes '_'."""
    return _UNSAFE.sub("_", text)


def tracking_problem(uri: str, *, timeout: float = 5.0) -> str | None:
    """Why the tracking server at ``uri`` cannot be used, or None (databases are not probed:
    opening one creates it). Asks the server's unauthenticated /health endpoint."""
    if not uri.startswith(("http://", "https://")):
        return None
    import requests

    try:
        response = requests.get(f"{uri.rstrip('/')}/health", timeout=timeout)
    except requests.RequestException as exc:
        return f"the MLflow tracking server {uri} is unreachable: {type(exc).__name__}"
    if response.status_code != 200:
        return f"the MLflow tracking server {uri} answered /health with {response.status_code}"
    return None
