"""Log the trained UNet as an MLflow model, register a version, and gate the alias.

The logged model is `jobs/pyfunc_model.py` as code plus the unet_core checkpoint as the
artifact `unet` (`artifacts/unet.pt` in the model folder: what jobs/model_source.py loads).
The alias (default `champion`) moves to the new version only when its validation mIoU is at
least `--min-miou` and not below the version holding the alias (its `val_miou` tag), unless
`--force-alias`; otherwise the version stays registered without the alias and the reason is
returned.
"""

from __future__ import annotations

import logging
import math
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PYFUNC_FILE = Path(__file__).resolve().with_name("pyfunc_model.py")
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Registration:
    name: str
    version: str
    alias: str
    alias_set: bool
    reason: str
    reused: bool = False

    @property
    def model_uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def code_version() -> str:
    """`git describe` of this checkout, else the package version."""
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty", "--tags"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        if out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
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
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    version = find_registered(client, name, run_id, epoch)
    reused = version is not None
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
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy", "pillow"],
            )
        finally:
            pyfunc_log.setLevel(level)
        registered = mlflow.register_model(info.model_uri, name)
        version = str(registered.version)
        all_tags = {
            "run_id": run_id,
            "val_miou": f"{val_miou:.6f}",
            "epoch": str(epoch),
            "code_version": code_version(),
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
    return Registration(name, version, alias, alias_set, reason, reused)


def publish(cfg, plan, result, uri: str, run_id: str, scratch: Path) -> dict:
    """The end of a training run (jobs/train.py): figures, then the best checkpoint (by
    val_miou) logged, registered and gated; returns the job's JSON summary.

    `cfg` is the TrainJobConfig, `plan` the DataPlan, `result` Ray Train's Result."""
    import mlflow

    from jobs import datasets, tracking
    from jobs.worker_loop import MODEL_FILE
    from unet_core.checkpoint import load_checkpoint

    if not result.best_checkpoints:
        raise RuntimeError(f"the run reported no checkpoint (storage {result.path})")
    checkpoint, metrics = max(  # best val_miou; the later epoch on ties
        result.best_checkpoints, key=lambda cm: (cm[1].get("val_miou", 0.0), cm[1].get("epoch", 0))
    )
    with checkpoint.as_directory() as folder:
        shutil.copy(Path(folder) / MODEL_FILE, scratch / MODEL_FILE)
    loaded = load_checkpoint(scratch / MODEL_FILE)
    epoch, val_miou = int(metrics["epoch"]), float(metrics["val_miou"])
    with mlflow.start_run(run_id=run_id):
        tracking.log_curves(uri, run_id, scratch)
        samples = datasets.read_samples(
            plan.val_root,
            plan.val,
            class_map=plan.class_map,
            channels=plan.in_channels,
            endpoint_url=cfg.s3_endpoint_url,
        )
        tracking.log_panel(uri, run_id, loaded, samples, scratch)
        reg = log_and_register(
            run_id=run_id,
            checkpoint_path=scratch / MODEL_FILE,
            name=cfg.register_as,
            alias=cfg.alias,
            val_miou=val_miou,
            epoch=epoch,
            min_miou=cfg.min_miou,
            force_alias=cfg.force_alias,
            tags={"data_root": plan.root, "run_name": cfg.run_name},
        )
        mlflow.set_tags({"model_uri": reg.model_uri, "best_epoch": str(epoch)})
    speed = tracking.metric_histories(uri, run_id, ["images_per_second", "epoch"])
    steady = speed["images_per_second"][1:] or speed["images_per_second"]  # epoch 1 warms up
    print(
        f"alias @{cfg.alias}: {'set' if reg.alias_set else 'not set'} ({reg.reason})",
        file=sys.stderr,
    )
    return {
        "run_id": run_id,
        "run_name": cfg.run_name,
        "experiment": cfg.experiment,
        "tracking_uri": uri,
        "model_uri": reg.model_uri,
        "model_name": reg.name,
        "model_version": reg.version,
        "alias": reg.alias,
        "alias_set": reg.alias_set,
        "alias_reason": reg.reason,
        "val_miou": val_miou,
        "best_epoch": epoch,
        "epochs": int(max(speed["epoch"], default=0)),
        "images_per_second": round(sum(steady) / len(steady), 2) if steady else math.nan,
        "num_workers": cfg.num_workers,
        "data_root": plan.root,
        "checkpoints": str(result.path),
    }
