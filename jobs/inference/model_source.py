"""Where the batch jobs' model comes from: an MLflow URI or a checkpoint path, resolved once.

The driver resolves ``models:/NAME@ALIAS`` to ``models:/NAME/VERSION`` a single time, downloads
the model once and reads the unet_core checkpoint (``unet.pt``, found anywhere under the
downloaded folder) into bytes. Actors get those bytes through the Ray object store, so every
actor runs the same version even if the alias moves mid-job, and no actor talks to MLflow.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from jobs.common import fs
from jobs.common.mlflow_store import mlflow_client, registry_uri, resolve_tracking_uri

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "unet.pt"
_MODELS_ALIAS = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)/?$")
_MODELS_VERSION = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)/?$")
_RUNS = re.compile(r"^runs:/(?P<run_id>[^/]+)(/(?P<path>.*))?$")


class ModelSourceError(ValueError):
    """A model URI that cannot be resolved or holds no unet_core checkpoint."""


@dataclass(frozen=True)
class ResolvedModel:
    """A model pinned to one fixed source (never an alias)."""

    uri: str
    """The URI or path as given (``models:/unet@champion``)."""
    uri_resolved: str
    """Fixed form: ``models:/unet/3``, ``runs:/RUN/model``, or an absolute path / s3:// URI."""
    name: str | None = None
    """Registered model name (models:/ URIs only)."""
    version: str | None = None
    """Registered model version (models:/ URIs only)."""
    run_id: str | None = None
    """MLflow run that produced the model, when known."""
    alias: str | None = None
    """The alias the version was resolved from, if any."""

    def to_dict(self) -> dict[str, str | None]:
        return {
            "model_uri": self.uri_resolved,
            "model_name": self.name,
            "model_version": self.version,
            "model_run_id": self.run_id,
            "model_alias": self.alias,
        }


def is_mlflow_uri(uri: str) -> bool:
    return uri.startswith(("models:/", "runs:/", "mlflow-artifacts:/"))


def resolve_model(uri: str, *, tracking_uri: str | None = None) -> ResolvedModel:
    """Pin ``uri`` to a fixed source; aliases are looked up in the registry once, here."""
    uri = str(uri).strip()
    if match := _MODELS_ALIAS.match(uri):
        name, alias = match["name"], match["alias"]
        client, tracking = mlflow_client(tracking_uri)
        try:
            mv = client.get_model_version_by_alias(name, alias)
        except Exception as exc:  # MlflowException for a missing model or alias
            raise ModelSourceError(
                f"{uri}: no version of registered model {name!r} holds alias {alias!r} in "
                f"{tracking} ({exc}). Train and register a model (jobs/train.py), set the alias, "
                "or pass --model models:/NAME/VERSION or a checkpoint path"
            ) from exc
        logger.info("%s resolves to models:/%s/%s", uri, name, mv.version)
        return ResolvedModel(
            uri=uri,
            uri_resolved=f"models:/{name}/{mv.version}",
            name=name,
            version=str(mv.version),
            run_id=mv.run_id,
            alias=alias,
        )
    if match := _MODELS_VERSION.match(uri):
        name, version = match["name"], match["version"]
        client, tracking = mlflow_client(tracking_uri)
        try:
            mv = client.get_model_version(name, version)
        except Exception as exc:
            raise ModelSourceError(
                f"{uri}: registered model {name!r} has no version {version} in {tracking} "
                f"({exc}); list versions in the MLflow UI or pass another --model"
            ) from exc
        return ResolvedModel(
            uri=uri, uri_resolved=uri.rstrip("/"), name=name, version=version, run_id=mv.run_id
        )
    if match := _RUNS.match(uri):
        return ResolvedModel(uri=uri, uri_resolved=uri, run_id=match["run_id"])
    if uri.startswith("models:/"):
        raise ModelSourceError(
            f"{uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION (stages are gone in "
            "MLflow 3: use an alias)"
        )
    if is_mlflow_uri(uri):
        return ResolvedModel(uri=uri, uri_resolved=uri)
    return ResolvedModel(uri=uri, uri_resolved=fs.absolute(uri))


def find_checkpoint(root: str | Path) -> Path:
    """``root`` itself when it is a file, else the single ``unet.pt`` anywhere under it."""
    root = Path(root)
    if root.is_file():
        return root
    found = sorted(root.rglob(CHECKPOINT_NAME))
    if not found:
        found = sorted(root.rglob("*.pt"))
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} ({', '.join(str(p) for p in found[:5])})"
        raise ModelSourceError(
            f"{root}: expected exactly one {CHECKPOINT_NAME} (a unet_core checkpoint) under the "
            f"model folder, found {what}; log the model with jobs/train.py (jobs/training/registry.py) or pass the "
            "checkpoint file itself"
        )
    return found[0]


def fetch_checkpoint_bytes(
    resolved: ResolvedModel,
    *,
    tracking_uri: str | None = None,
    endpoint_url: str | None = None,
) -> bytes:
    """The checkpoint's bytes: downloaded once (MLflow), or read from a path or s3:// URI."""
    uri = resolved.uri_resolved
    if is_mlflow_uri(uri):
        import mlflow.artifacts

        tracking = resolve_tracking_uri(tracking_uri)
        with tempfile.TemporaryDirectory(prefix="unet-model-") as tmp:
            try:
                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=uri,
                    dst_path=tmp,
                    tracking_uri=tracking,
                    registry_uri=registry_uri(tracking_uri, tracking),
                )
            except Exception as exc:
                raise ModelSourceError(
                    f"{uri}: cannot download the model from {tracking} ({exc})"
                ) from exc
            return find_checkpoint(local).read_bytes()
    if fs.is_remote(uri):
        try:
            return fs.read_bytes(uri, endpoint_url=endpoint_url)
        except OSError as exc:
            raise ModelSourceError(f"{uri}: cannot read the checkpoint ({exc})") from exc
    path = Path(uri)
    if not path.exists():
        raise ModelSourceError(
            f"{uri}: no such checkpoint file or folder, and not an MLflow URI "
            "(models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN/PATH)"
        )
    return find_checkpoint(path).read_bytes()


def checkpoint_digest(data: bytes) -> str:
    """Short content hash: identifies the exact weights in the manifest and the summary."""
    return hashlib.sha256(data).hexdigest()[:16]
