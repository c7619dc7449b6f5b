"""Log and register an ensemble (`unet_core.ensemble`) as one MLflow model version.

The ensemble file is the logged model's checkpoint artifact, so the version is the same pyfunc
(`jobs/training/pyfunc_model.py`, with `unet_core` as its code path), with the same
requirements and tags as a single model, and everything that loads a version (segment,
evaluate, export, the pyfunc, the alias gate) uses it with no flag. Each member's own
checkpoint is logged beside it as a run artifact ``members/fold_<i>.pt`` (not inside the
model, which batch jobs download whole: the ensemble file already holds every member's
weights). The alias moves through the same gate as a single model's
(`jobs.training.registry.log_and_register`, `jobs.training.champion`).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jobs.training.registry import Registration, log_and_register
from unet_core.checkpoint import load_checkpoint

log = logging.getLogger(__name__)

MEMBERS_ARTIFACT_DIR = "members"
"""Run artifact folder of the members' checkpoints (``members/fold_<i>.pt``)."""


def member_artifact(i: int) -> str:
    """The run artifact path of member ``i``'s checkpoint."""
    return f"{MEMBERS_ARTIFACT_DIR}/fold_{i}.pt"


def log_ensemble_model(
    *,
    run_id: str,
    ensemble_path: str | os.PathLike,
    member_paths: Sequence[str | os.PathLike],
    tags: dict[str, str] | None = None,
    **gate: Any,
) -> Registration:
    """Log the ensemble file ``ensemble_path`` (written by `unet_core.ensemble.save_ensemble`
    of ``member_paths``, in that order) under the active MLflow run ``run_id``, each member's
    checkpoint as the run artifact ``members/fold_<i>.pt``, register a version and maybe move
    the alias, exactly as `log_and_register` does for a single model: ``gate`` holds its
    keyword arguments (name, alias, val_miou, epoch, min_miou, force_alias, comparison,
    tracking_uri), ``val_miou`` being the figure held against ``--min-miou`` (for K folds, the
    out-of-fold mean IoU).
    The version is tagged ``ensemble_members`` (K) and ``members_artifacts`` (the members'
    ``runs:/`` folder). ValueError when the file does not load or holds another number of
    members than ``member_paths``.
    """
    import mlflow

    loaded = load_checkpoint(ensemble_path)
    if loaded.members != len(member_paths):
        raise ValueError(
            f"{os.fspath(ensemble_path)} holds {loaded.members} member(s) but "
            f"{len(member_paths)} member checkpoint(s) were given; write it with "
            "unet_core.ensemble.save_ensemble(path, member_paths)"
        )
    client = mlflow.MlflowClient(gate.get("tracking_uri") or mlflow.get_tracking_uri())
    with tempfile.TemporaryDirectory(prefix="unet-members-") as tmp:
        folder = Path(tmp) / MEMBERS_ARTIFACT_DIR
        folder.mkdir()
        for i, path in enumerate(member_paths):
            shutil.copyfile(path, folder / Path(member_artifact(i)).name)
        client.log_artifacts(run_id, str(folder), MEMBERS_ARTIFACT_DIR)
    log.info("logged %d member checkpoints under runs:/%s/members", len(member_paths), run_id)
    ensemble_tags = {
        "ensemble_members": str(loaded.members),
        "members_artifacts": f"runs:/{run_id}/{MEMBERS_ARTIFACT_DIR}",
    }
    gate.setdefault("epoch", 0)
    return log_and_register(
        run_id=run_id, checkpoint_path=ensemble_path, tags={**ensemble_tags, **(tags or {})}, **gate
    )
