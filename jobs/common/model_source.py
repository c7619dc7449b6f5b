"""Where the jobs' model comes from: an MLflow URI or a checkpoint path, read in one call.

`fetch_model` is the one reader of the registry: segment, evaluate, export and the champion
gate call it. MLflow's own parser reads ``models:/`` URIs (MLflow 3: ``models:/NAME@ALIAS``,
``models:/NAME/VERSION`` or ``models:/m-<model_id>``, a logged model). An alias is resolved to
``models:/NAME/VERSION`` a single time (a version and a logged model id are already fixed), the
model downloaded once, and its checkpoint artifact (`CHECKPOINT_ARTIFACT`, the name the
training job logs it under) read into bytes, loaded once to check it, and digested. Batch jobs
hand the bytes to their actors through the Ray object store, so every actor runs the same
version even if the alias moves mid-job, and no actor talks to MLflow.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from jobs.common import fs
from jobs.common.mlflow_store import (
    TrackingUriError,
    mlflow_client,
    registry_uri,
    resolve_tracking_uri,
)
from jobs.common.private_apis import parse_model_uri
from unet_core.checkpoint import LoadedModel, load_checkpoint

logger = logging.getLogger(__name__)

CHECKPOINT_ARTIFACT = "unet"
"""Name of the checkpoint artifact of a logged model: what `jobs/training/registry.py` logs
(``artifacts={CHECKPOINT_ARTIFACT: ...}``) and `jobs/training/pyfunc_model.py` loads."""
CHECKPOINT_FILE = "unet.pt"
"""File name of a checkpoint in a model folder without an MLmodel file (``artifacts/unet.pt``
of the pyfunc layout, or ``unet.pt`` of a training checkpoint folder)."""
URI_FORMS = (
    "models:/NAME@ALIAS, models:/NAME/VERSION, models:/m-<model_id> (a logged model), "
    "runs:/RUN/PATH"
)


class ModelSourceError(ValueError):
    """A model URI that cannot be resolved or holds no unet_core checkpoint."""

    exit_kind = "model"  # a job ends with exit code 2 (jobs.common.exits)


@dataclass(frozen=True)
class ResolvedModel:
    """A model pinned to one fixed source (never an alias)."""

    uri: str
    """The URI or path as given (``models:/unet@champion``)."""
    uri_resolved: str
    """Fixed form: ``models:/unet/3``, ``models:/m-<id>``, ``runs:/RUN/model``, or an absolute
    path / s3:// URI."""
    name: str | None = None
    """Registered model name (models:/ URIs; for a logged model, the version it is linked to)."""
    version: str | None = None
    """Registered model version (as for ``name``)."""
    run_id: str | None = None
    """MLflow run that produced the model, when known."""
    alias: str | None = None
    """The alias the version was resolved from, if any."""
    model_id: str | None = None
    """MLflow 3 logged model id (``m-...``) of a models:/ URI."""

    def to_dict(self) -> dict[str, str | None]:
        return {
            "model_uri": self.uri_resolved,
            "model_name": self.name,
            "model_version": self.version,
            "model_run_id": self.run_id,
            "model_alias": self.alias,
            "model_id": self.model_id,
        }


def is_mlflow_uri(uri: str) -> bool:
    return uri.startswith(("models:/", "runs:/", "mlflow-artifacts:/"))


def resolve_model(uri: str, *, tracking_uri: str | None = None) -> ResolvedModel:
    """Pin ``uri`` to a fixed source; aliases are looked up in the registry once, here."""
    uri = str(uri).strip()
    if uri.startswith("models:/"):
        return _resolve_models_uri(uri, tracking_uri)
    if uri.startswith("runs:/"):
        from mlflow.exceptions import MlflowException
        from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

        try:
            run_id, _ = RunsArtifactRepository.parse_runs_uri(uri)
        except MlflowException as exc:
            raise ModelSourceError(f"{uri}: {exc.message}; expected one of {URI_FORMS}") from exc
        return ResolvedModel(uri=uri, uri_resolved=uri, run_id=run_id)
    if is_mlflow_uri(uri):
        return ResolvedModel(uri=uri, uri_resolved=uri)
    return ResolvedModel(uri=uri, uri_resolved=fs.absolute(uri))


def _resolve_models_uri(uri: str, tracking_uri: str | None) -> ResolvedModel:
    from mlflow.exceptions import MlflowException

    try:
        parsed = parse_model_uri(uri.rstrip("/"))
    except MlflowException as exc:
        raise ModelSourceError(f"{uri}: not a model URI; expected one of {URI_FORMS}") from exc
    if parsed.model_id is None and parsed.version is None and parsed.alias is None:
        raise ModelSourceError(
            f"{uri}: stages and 'latest' move under a running job (and stages are gone in "
            f"MLflow 3): use an alias or a version; expected one of {URI_FORMS}"
        )
    client, tracking = mlflow_client(tracking_uri)
    if parsed.model_id is not None:
        return _resolve_logged_model(uri, parsed.model_id, client, tracking)
    name = parsed.name
    if parsed.alias is not None:
        try:
            mv = client.get_model_version_by_alias(name, parsed.alias)
        except MlflowException as exc:  # a missing model or alias
            raise ModelSourceError(
                f"{uri}: no version of registered model {name!r} holds alias {parsed.alias!r} "
                f"in {tracking} ({exc.message}). Train and register a model (jobs/train.py), "
                "set the alias, or pass --model models:/NAME/VERSION or a checkpoint path"
            ) from exc
        logger.info("%s resolves to models:/%s/%s", uri, name, mv.version)
    else:
        try:
            mv = client.get_model_version(name, parsed.version)
        except MlflowException as exc:
            raise ModelSourceError(
                f"{uri}: registered model {name!r} has no version {parsed.version} in "
                f"{tracking} ({exc.message}); list versions in the MLflow UI or pass another "
                "--model"
            ) from exc
    return ResolvedModel(
        uri=uri,
        uri_resolved=f"models:/{name}/{mv.version}",
        name=name,
        version=str(mv.version),
        run_id=mv.run_id,
        alias=parsed.alias,
        model_id=_model_id_of(mv),
    )


def _model_id_of(mv) -> str | None:
    """The logged model behind a registered version: its ``model_id``, else the id in its
    ``models:/m-...`` source (the sqlite registry keeps only the source)."""
    if getattr(mv, "model_id", None):
        return mv.model_id
    source = str(mv.source or "")
    return parse_model_uri(source).model_id if source.startswith("models:/") else None


def _resolve_logged_model(uri: str, model_id: str, client, tracking: str) -> ResolvedModel:
    """A logged model is immutable: it resolves to itself. Its registered version is the one
    ``mlflow.register_model`` linked it to (the ``mlflow.modelVersions`` tag), if exactly one."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    try:
        logged = client.get_logged_model(model_id)
    except MlflowException as exc:
        hint = (
            ""
            if model_id.startswith("m-")
            else f"; models:/{model_id} names a logged model by id (MLflow 3): for a registered "
            f"model pass models:/{model_id}@ALIAS or models:/{model_id}/VERSION"
        )
        raise ModelSourceError(
            f"{uri}: no logged model with id {model_id!r} in {tracking}{hint} ({exc.message})"
        ) from exc
    try:
        links = json.loads(logged.tags.get(MLFLOW_MODEL_VERSIONS) or "[]")
    except ValueError:
        links = []
    name = version = None
    if len(links) == 1 and isinstance(links[0], dict):
        name, version = links[0].get("name"), str(links[0].get("version"))
    return ResolvedModel(
        uri=uri,
        uri_resolved=f"models:/{logged.model_id}",
        name=name,
        version=version,
        run_id=logged.source_run_id,
        model_id=logged.model_id,
    )


def find_checkpoint(root: str | Path) -> Path:
    """The checkpoint of a model: ``root`` itself when it is a file; in a model folder with an
    MLmodel file, the file of its `CHECKPOINT_ARTIFACT` artifact; otherwise
    ``artifacts/unet.pt`` (the pyfunc layout) or ``unet.pt`` (a training checkpoint folder)."""
    root = Path(root)
    if root.is_file():
        return root
    if (root / "MLmodel").is_file():
        return _logged_artifact(root)
    for candidate in (root / "artifacts" / CHECKPOINT_FILE, root / CHECKPOINT_FILE):
        if candidate.is_file():
            return candidate
    raise ModelSourceError(
        f"{root}: not a logged unet model: no MLmodel file, no artifacts/{CHECKPOINT_FILE} and "
        f"no {CHECKPOINT_FILE} in it; pass a model logged by jobs/train.py (its folder or "
        "models:/ URI) or the checkpoint file itself"
    )


def _logged_artifact(root: Path) -> Path:
    """The file of the `CHECKPOINT_ARTIFACT` artifact recorded in ``root/MLmodel``."""
    from mlflow.models import Model

    try:
        flavor = Model.load(str(root / "MLmodel")).flavors.get("python_function") or {}
    except Exception as exc:  # noqa: BLE001 - a damaged MLmodel file: say which
        raise ModelSourceError(f"{root / 'MLmodel'}: cannot be read ({exc})") from exc
    artifacts = flavor.get("artifacts") or {}
    relative = (artifacts.get(CHECKPOINT_ARTIFACT) or {}).get("path")
    if not relative or not (root / relative).is_file():
        raise ModelSourceError(
            f"{root}: the logged model has no {CHECKPOINT_ARTIFACT!r} artifact file (its "
            f"artifacts: {sorted(artifacts) or 'none'}); pass a model logged by jobs/train.py "
            "(jobs/training/registry.py) or the checkpoint file itself"
        )
    return root / relative


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
                    artifact_uri=_artifact_location(resolved, tracking_uri),
                    dst_path=tmp,
                    tracking_uri=tracking,
                    registry_uri=registry_uri(tracking_uri, tracking),
                )
            except Exception as exc:
                raise ModelSourceError(
                    f"{uri}: cannot download the model from {tracking} ({exc})"
                ) from exc
            try:
                return find_checkpoint(local).read_bytes()
            except ModelSourceError as exc:  # it names the download folder: name the URI
                raise ModelSourceError(f"{uri}: {exc}") from exc
    if fs.is_remote(uri):
        try:
            return fs.read_bytes(uri, endpoint_url=endpoint_url)
        except OSError as exc:
            raise ModelSourceError(f"{uri}: cannot read the checkpoint ({exc})") from exc
    path = Path(uri)
    if not path.exists():
        raise ModelSourceError(
            f"{uri}: no such checkpoint file or folder, and not an MLflow URI ({URI_FORMS})"
        )
    return find_checkpoint(path).read_bytes()


def _artifact_location(resolved: ResolvedModel, tracking_uri: str | None) -> str:
    """Where a models:/ URI's files are, asked of this job's store: MLflow's models:/ artifact
    repository asks the process-wide tracking URI instead of the one passed to it. Other
    URIs download as they are."""
    if not resolved.uri_resolved.startswith("models:/"):
        return resolved.uri_resolved
    client, _ = mlflow_client(tracking_uri)
    if resolved.model_id and resolved.uri_resolved == f"models:/{resolved.model_id}":
        return client.get_logged_model(resolved.model_id).artifact_location
    return client.get_model_version_download_uri(resolved.name, resolved.version)


def checkpoint_digest(data: bytes) -> str:
    """Short content hash: identifies the exact weights in the manifest and the summary."""
    return hashlib.sha256(data).hexdigest()[:16]


@dataclass(frozen=True)
class FetchedModel:
    """A model read once on the driver: where it is pinned, its bytes, the rebuilt UNet."""

    resolved: ResolvedModel
    """The URI pinned to a fixed version (never an alias)."""
    checkpoint: bytes
    """The unet_core checkpoint's bytes (what predictor actors get through the object store)."""
    loaded: LoadedModel
    """The checkpoint rebuilt on CPU: model, class map, preprocessing."""
    sha256: str
    """`checkpoint_digest` of the bytes: identifies the exact weights in outputs."""


def fetch_model(
    uri: str, *, tracking_uri: str | None = None, endpoint_url: str | None = None
) -> FetchedModel:
    """Resolve ``uri`` (an alias once), fetch its checkpoint, load and digest it. Every failure
    is a `ModelSourceError` naming the URI and what to pass instead."""
    try:
        resolved = resolve_model(uri, tracking_uri=tracking_uri)
        data = fetch_checkpoint_bytes(
            resolved, tracking_uri=tracking_uri, endpoint_url=endpoint_url
        )
    except (ModelSourceError, TrackingUriError):  # named as they are
        raise
    except (ValueError, OSError) as exc:  # an unreadable file
        raise ModelSourceError(f"{uri}: cannot read the model ({exc})") from exc
    try:
        loaded = load_checkpoint(data)
    except ValueError as exc:
        raise ModelSourceError(
            f"{uri}: {exc}; pass a model logged by jobs/train.py or a checkpoint file it wrote"
        ) from exc
    return FetchedModel(resolved, data, loaded, checkpoint_digest(data))
