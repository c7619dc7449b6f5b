"""Log the trained UNet as an MLflow model, register a version, and gate the alias.

The logged model is `jobs/training/pyfunc_model.py` as code, the `unet_core` package as its
code path (so it loads where this project is not installed) and the unet_core checkpoint as the
artifact `unet` (`artifacts/unet.pt` in the model folder: what jobs/inference/model_source.py loads).
The alias (default `champion`) moves to the new version only when its validation mIoU is at
least `--min-miou` and not below the version holding the alias (its `val_miou` tag), unless
`--force-alias`; otherwise the version stays registered without the alias and the reason is
returned.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PYFUNC_FILE = Path(__file__).resolve().with_name("pyfunc_model.py")


@dataclass
class Registration:
    name: str
    version: str
    alias: str
    alias_set: bool
    reason: str

    @property
    def model_uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def code_version(run_tags: dict[str, str]) -> str:
    """The commit MLflow recorded for the run (its mlflow.source.git.commit tag:
    `jobs.training.tracking.source_tags`), else the package version."""
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT

    if run_tags.get(MLFLOW_GIT_COMMIT):
        return run_tags[MLFLOW_GIT_COMMIT]
    import unet_core

    return f"unet-ray {unet_core.__version__}"


def decide_alias(
    client, name: str, alias: str, *, val_miou: float, min_miou: float, force: bool
) -> tuple[bool, str]:
    """(move the alias?, why) for a version scoring `val_miou`."""
    from mlflow.exceptions import MlflowException

    if not math.isfinite(val_miou) or val_miou < min_miou:
        return False, f"val_miou {val_miou:.4f} is below --min-miou {min_miou:.4f}"
    try:
        holder = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return True, f"no version held @{alias} yet"
    try:
        held = float(holder.tags.get("val_miou", "nan"))
    except ValueError:
        held = float("nan")
    if math.isnan(held):
        return True, f"version {holder.version} @{alias} has no val_miou tag to compare with"
    if val_miou < held and not force:
        return False, (
            f"val_miou {val_miou:.4f} is below {held:.4f} of version {holder.version} "
            f"@{alias}; pass --force-alias to move it anyway"
        )
    verb = "forced over" if val_miou < held else "not below"
    return True, f"val_miou {val_miou:.4f} {verb} {held:.4f} of version {holder.version} @{alias}"


def find_registered(client, name: str, run_id: str, epoch: int) -> str | None:
    """The version this run already registered for this epoch (a resubmitted finished run)."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException:
        return None
    for version in versions:
        if version.tags.get("epoch") == str(epoch):
            return str(version.version)
    return None


def log_and_register(
    *,
    run_id: str,
    checkpoint_path: str | Path,
    name: str,
    alias: str,
    val_miou: float,
    epoch: int,
    min_miou: float = 0.0,
    force_alias: bool = False,
    tags: dict[str, str] | None = None,
) -> Registration:
    """Log the model under the active MLflow run `run_id`, register it, maybe move the alias."""
    import mlflow
    import torch
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
    from mlflow.tracking import MlflowClient

    import unet_core

    client = MlflowClient()
    version = find_registered(client, name, run_id, epoch)
    if version is None:
        # No signature: inputs are images of any size (HxW or HxWxC) or a DataFrame of encoded
        # images; MLflow's warning that it could not infer one is expected, so it is muted.
        pyfunc_log = logging.getLogger("mlflow.pyfunc")
        level = pyfunc_log.level
        pyfunc_log.setLevel(logging.ERROR)
        try:
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(PYFUNC_FILE),
                artifacts={"unet": str(checkpoint_path)},
                # unet_core travels in the model (code/unet_core, put on sys.path on load), so
                # mlflow.pyfunc.load_model works where this project is not installed.
                code_paths=[str(Path(unet_core.__file__).resolve().parent)],
                # What unet_core imports (torch pinned as in pyproject), not this project.
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy", "pillow"],
            )
        finally:
            pyfunc_log.setLevel(level)
        # The client's calls, not mlflow.register_model, which prints two lines to stderr
        # ("Successfully registered model ...", "Created version ...") past logging.
        try:
            client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
        registered = client.create_model_version(
            name, source=info.model_uri, run_id=run_id, model_id=info.model_id
        )
        version = str(registered.version)
        log.info("registered %s as version %s of %s", info.model_uri, version, name)
        all_tags = {
            "run_id": run_id,
            "val_miou": f"{val_miou:.6f}",
            "epoch": str(epoch),
            "code_version": code_version(client.get_run(run_id).data.tags),
            **(tags or {}),
        }
        for key, value in all_tags.items():
            client.set_model_version_tag(name, version, key, value)
    else:
        log.info(
            "run %s already registered epoch %d as %s version %s", run_id, epoch, name, version
        )
    alias_set, reason = decide_alias(
        client, name, alias, val_miou=val_miou, min_miou=min_miou, force=force_alias
    )
    if alias_set:
        client.set_registered_model_alias(name, alias, version)
        log.info("models:/%s@%s -> version %s (%s)", name, alias, version, reason)
    else:
        log.warning("version %s of %s registered without @%s: %s", version, name, alias, reason)
    return Registration(name, version, alias, alias_set, reason)
