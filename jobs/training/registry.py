"""Log the trained UNet as an MLflow model, register a version, and gate the alias.

The logged model is `jobs/training/pyfunc_model.py` as code, the `unet_core` package as its
code path (so it loads where this project is not installed) and the unet_core checkpoint as the
artifact `CHECKPOINT_ARTIFACT` (`artifacts/unet.pt` in the model folder, recorded in its
MLmodel file: what `jobs.common.model_source.fetch_model` reads).
The alias (default `champion`) moves to the new version only when its validation mIoU (the
workers' `val_miou`) is at least `--min-miou` and, on this run's validation pairs, it scores
no lower than the version holding the alias (both scored by one computation:
`jobs.training.champion`); a holder that cannot be compared (unreadable, another class map or
input channels) keeps the alias unless `--force-alias`. Otherwise the version stays registered
without the alias and the reason is returned. Both figures and the reason are tags of the new
version.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from jobs.common.mlflow_store import mlflow_client
from jobs.common.model_source import CHECKPOINT_ARTIFACT
from jobs.training.champion import ChampionComparison, alias_holder
from jobs.training.init_from import parent_tags

log = logging.getLogger(__name__)

PYFUNC_FILE = Path(__file__).resolve().with_name("pyfunc_model.py")


@dataclass
class Registration:
    name: str
    version: str
    alias: str
    alias_set: bool
    reason: str
    comparison: ChampionComparison | None = None
    """The gate's comparison with the version that held the alias."""

    def alias_decision(self) -> dict:
        """The gate's decision with both figures, for the job's summary."""
        figures = self.comparison.to_dict() if self.comparison else {}
        return {"alias_set": self.alias_set, "reason": self.reason, **figures}

    @property
    def model_uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def summary(self) -> dict:
        """The registry keys of the job's summary."""
        return {
            "model_uri": self.model_uri,
            "model_name": self.name,
            "model_version": self.version,
            "alias": self.alias,
            "alias_set": self.alias_set,
            "alias_reason": self.reason,
            "alias_decision": self.alias_decision(),
        }


def code_version(run_tags: dict[str, str]) -> str:
    """The commit MLflow recorded for the run (its mlflow.source.git.commit tag:
    `jobs.training.tracking.source_tags`), else the package version."""
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT

    if run_tags.get(MLFLOW_GIT_COMMIT):
        return run_tags[MLFLOW_GIT_COMMIT]
    import unet_core

    return f"unet-ray {unet_core.__version__}"


def decide_alias(
    comparison: ChampionComparison, *, val_miou: float, min_miou: float, force: bool
) -> tuple[bool, str]:
    """(move the alias?, why) for a version whose workers measured `val_miou`, given its
    comparison with the version holding the alias on this run's validation pairs."""
    alias, held_by = comparison.alias, comparison.champion_version
    if not math.isfinite(val_miou) or val_miou < min_miou:
        return False, f"val_miou {val_miou:.4f} is below --min-miou {min_miou:.4f}"
    if held_by is None:
        return True, f"no version held @{alias} yet"
    if not comparison.compared:
        why = comparison.refused or "it was not scored on this run's validation pairs"
        if force:
            return True, f"forced over version {held_by} @{alias}, not compared: {why}"
        return False, (
            f"version {held_by} @{alias} cannot be compared with this one: {why}; pass "
            "--force-alias to move it anyway"
        )
    ours, theirs = comparison.candidate_miou, comparison.champion_miou
    where = f"on this run's {comparison.pairs} validation pairs"
    if ours < theirs and not force:
        return False, (
            f"mIoU {ours:.4f} is below {theirs:.4f} of version {held_by} @{alias} {where}; "
            "pass --force-alias to move it anyway"
        )
    verb = "forced over" if ours < theirs else "not below"
    return True, f"mIoU {ours:.4f} {verb} {theirs:.4f} of version {held_by} @{alias} {where}"


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
    comparison: ChampionComparison | None = None,
    tracking_uri: str | None = None,
) -> Registration:
    """Log the model under the active MLflow run `run_id`, register it, maybe move the alias.
    `comparison` (`jobs.training.champion.compare_with_champion`): without it, a version
    holding the alias counts as not compared. `tracking_uri`: the job's store (default: the
    one the active run logs to)."""
    import mlflow
    import torch

    import unet_core

    client, _ = mlflow_client(tracking_uri or mlflow.get_tracking_uri())
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
                artifacts={CHECKPOINT_ARTIFACT: str(checkpoint_path)},
                # unet_core travels in the model (code/unet_core, put on sys.path on load), so
                # mlflow.pyfunc.load_model works where this project is not installed.
                code_paths=[str(Path(unet_core.__file__).resolve().parent)],
                # What unet_core imports (torch pinned as in pyproject), not this project.
                pip_requirements=[
                    f"torch=={torch.__version__.split('+')[0]}",
                    "numpy",
                    "pillow",
                    "tifffile",
                ],
            )
        finally:
            pyfunc_log.setLevel(level)
        # mlflow.register_model prints its notices ("Successfully registered model ...",
        # "Created version ...") to stderr past logging: they go to our log at DEBUG. Logging
        # handlers keep the stream they were made with, so warnings still reach stderr.
        printed = io.StringIO()
        with contextlib.redirect_stderr(printed):
            registered = mlflow.register_model(info.model_uri, name)
        for line in printed.getvalue().splitlines():
            log.debug("mlflow: %s", line)
        version = str(registered.version)
        log.info("registered %s as version %s of %s", info.model_uri, version, name)
        run_tags = client.get_run(run_id).data.tags
        all_tags = {
            "run_id": run_id,
            "val_miou": f"{val_miou:.6f}",
            "epoch": str(epoch),
            "code_version": code_version(run_tags),
            **parent_tags(run_tags),  # a run started --init-from: its parent (lineage)
            **(tags or {}),
        }
        for key, value in all_tags.items():
            client.set_model_version_tag(name, version, key, value)
    else:
        log.info(
            "run %s already registered epoch %d as %s version %s", run_id, epoch, name, version
        )
    if comparison is None:
        comparison = ChampionComparison(alias, alias_holder(client, name, alias))
    alias_set, reason = decide_alias(
        comparison, val_miou=val_miou, min_miou=min_miou, force=force_alias
    )
    for key, value in {**comparison.tags(), "alias_decision": reason[:500]}.items():
        client.set_model_version_tag(name, version, key, value)
    if alias_set:
        client.set_registered_model_alias(name, alias, version)
        log.info("models:/%s@%s -> version %s (%s)", name, alias, version, reason)
    else:
        log.warning("version %s of %s registered without @%s: %s", version, name, alias, reason)
    return Registration(name, version, alias, alias_set, reason, comparison)
