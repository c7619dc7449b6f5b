"""An exported file back in MLflow: an artifact of the model's run, tags on the version.

The file goes to ``<artifact_path>/unet.<format>`` of the run that produced the model (a second
export of the same format and graph replaces it), and a registered version gets
``export.<format>`` (the ``runs:/`` URI of that artifact, which
`mlflow.artifacts.download_artifacts` takes) plus ``export.<format>.max_abs_diff`` and
``export.<format>.sha256``. A ``uint8-mask`` graph is ``unet-uint8-mask.<format>``, its tags
``export.uint8-mask.<format>...``, so both graphs of a version live side by side.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from jobs.common.mlflow_store import mlflow_client
from jobs.common.model_source import ResolvedModel

logger = logging.getLogger(__name__)


def artifact_name(fmt: str, graph: str = "logits") -> str:
    return f"unet.{fmt}" if graph == "logits" else f"unet-{graph}.{fmt}"


def tag_prefix(fmt: str, graph: str = "logits") -> str:
    return f"export.{fmt}" if graph == "logits" else f"export.{graph}.{fmt}"


def log_export(
    resolved: ResolvedModel,
    path: Path,
    *,
    fmt: str,
    graph: str = "logits",
    max_abs_diff: float,
    sha256: str,
    artifact_path: str,
    tracking_uri: str | None,
) -> dict[str, Any]:
    """Log ``path`` to the model's run and tag its version; returns the artifact URI and tags."""
    client, tracking = mlflow_client(tracking_uri)
    name = artifact_name(fmt, graph)
    folder = artifact_path.strip("/")
    with tempfile.TemporaryDirectory(prefix="unet-export-") as tmp:
        staged = path
        if path.name != name:  # MLflow names the artifact after the local file
            staged = Path(tmp) / name
            shutil.copyfile(path, staged)
        try:
            client.log_artifact(resolved.run_id, str(staged), artifact_path=folder)
        except Exception as exc:
            raise RuntimeError(
                f"cannot log {path} to run {resolved.run_id} in {tracking} ({exc}); the file is "
                "written: rerun with --no-log-to-mlflow to skip logging"
            ) from exc
    uri = f"runs:/{resolved.run_id}/{folder}/{name}"
    logger.info("logged %s as %s", path, uri)
    tags: dict[str, str] = {}
    if resolved.name and resolved.version:
        prefix = tag_prefix(fmt, graph)
        tags = {
            prefix: uri,
            f"{prefix}.max_abs_diff": f"{max_abs_diff:.3g}",
            f"{prefix}.sha256": sha256,
        }
        for key, value in tags.items():
            client.set_model_version_tag(resolved.name, resolved.version, key, value)
        logger.info("tagged models:/%s/%s with %s", resolved.name, resolved.version, sorted(tags))
    return {"artifact_uri": uri, "version_tags": tags}
