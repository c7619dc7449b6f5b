"""What a search leaves: the table of trials (from Ray Tune's results and the MLflow child
runs), the child runs of stopped trials closed, and the best trial's checkpoint registered
through the train job's alias gate (`jobs.training.champion`, `jobs.training.registry`)."""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ray.tune import Callback

from jobs.tuning.trial import PARENT_TAG, TRIAL_TAG

log = logging.getLogger(__name__)

STOPPED_EARLY_TAG = "unet_ray.tune.stopped_early"
"""Tag of a child run whose trial ASHA stopped ("true"; the run's status is KILLED)."""


class TrialStates(Callback):
    """Ray Tune callback: every trial's final status (TERMINATED, ERROR, or one left PENDING or
    RUNNING by a search that did not finish), read on the driver after `Tuner.fit`."""

    def __init__(self) -> None:
        self.states: dict[str, str] = {}

    def on_experiment_end(self, trials, **info) -> None:
        self.states = {trial.trial_id: str(trial.status) for trial in trials}


@dataclass
class TrialRow:
    """One trial of the search, as the parent run's table lists it."""

    trial_id: str
    config: dict[str, Any]
    """The trial's sampled values."""
    status: str
    """Ray Tune's final status (TERMINATED when it ran or was stopped)."""
    epochs: int
    """Epochs it reported."""
    stopped_early: bool
    """ASHA stopped it before --epochs."""
    best: float | None
    """Its best value of --metric over its epochs."""
    best_epoch: int | None
    val_mean_iou: float | None
    """val_miou at its best epoch."""
    checkpoint_path: str | None
    """Its checkpoint of the best epoch (in the trial's Ray Train storage)."""
    run_id: str | None = None
    """Its MLflow child run."""
    error: str | None = None
    history: list[float] = field(default_factory=list)
    """--metric per epoch."""


def trial_rows(grid, states: dict[str, str], *, key: str, mode: str, epochs: int) -> list[TrialRow]:
    """The table of trials from Tune's ResultGrid; ``key`` is the loop's metric (val_miou)."""
    rows = []
    for result in grid:
        frame = result.metrics_dataframe
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        history: list[float] = []
        best = best_epoch = miou = path = None
        if frame is not None and key in frame:
            frame = frame[frame[key].notna()]
            history = [float(v) for v in frame[key]]
            if history:
                pick = frame[key].idxmax() if mode == "max" else frame[key].idxmin()
                row = frame.loc[pick]
                best, best_epoch = float(row[key]), int(row["epoch"])
                miou = float(row["val_miou"])
                path = row.get("checkpoint_path")
        done = len(history)
        rows.append(
            TrialRow(
                trial_id=str(trial_id),
                config={k: v for k, v in (result.config or {}).items()},
                status=states.get(str(trial_id), "UNKNOWN"),
                epochs=done,
                stopped_early=result.error is None and 0 < done < epochs,
                best=best,
                best_epoch=best_epoch,
                val_mean_iou=miou,
                checkpoint_path=str(path) if isinstance(path, str) else None,
                error=str(result.error) if result.error else None,
                history=history,
            )
        )
    return sorted(rows, key=lambda r: r.trial_id)


def attach_runs(rows: list[TrialRow], tracking_uri: str, parent_run_id: str) -> dict[str, Any]:
    """Each row's child run id (by its trial tag); returns {run_id: Run} of the children."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    children = client.search_runs(
        [experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'"
    )
    by_trial = {run.data.tags.get(TRIAL_TAG): run for run in children}
    for row in rows:
        run = by_trial.get(row.trial_id)
        row.run_id = run.info.run_id if run else None
    return {run.info.run_id: run for run in children}


def close_child_runs(rows: list[TrialRow], children: dict[str, Any], tracking_uri: str) -> None:
    """Child runs still RUNNING end as KILLED when ASHA stopped their trial early (tagged so),
    as FINISHED when the trial ran all its epochs (ASHA also stops a trial at its last rung,
    before the trial function closes its run), else as FAILED. A stopped trial's run that its
    trial function closed as FAILED (the stop interrupted `fit`, and Tune records no error for
    it) is KILLED too."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    for row in rows:
        run = children.get(row.run_id or "")
        if run is None:
            continue
        if row.stopped_early:
            client.set_tag(row.run_id, STOPPED_EARLY_TAG, "true")
        if row.stopped_early and run.info.status == "FAILED":
            client.set_terminated(row.run_id, status="KILLED")
        elif run.info.status == "RUNNING":
            done = row.status == "TERMINATED" and not row.error
            status = "KILLED" if row.stopped_early else "FINISHED" if done else "FAILED"
            client.set_terminated(row.run_id, status=status)


def best_row(rows: list[TrialRow], mode: str) -> TrialRow | None:
    """The trial with the best --metric that has a checkpoint of that epoch."""
    usable = [r for r in rows if r.best is not None and r.checkpoint_path and math.isfinite(r.best)]
    if not usable:
        return None
    return (max if mode == "max" else min)(usable, key=lambda r: r.best)


def table(rows: list[TrialRow]) -> list[dict[str, Any]]:
    """The rows as JSON objects (the parent run's trials.json)."""
    return [asdict(r) for r in rows]


def register_best(row: TrialRow, cfg, data, *, tracking_uri: str, parent_run_id: str):
    """Register ``row``'s checkpoint (its best epoch) on its child run, through the train job's
    gate: --min-miou, then no worse than the version holding --alias on the run's validation
    pairs. ``cfg``: the base `TrainJobConfig`. Returns the `Registration`."""
    import mlflow
    import ray.train

    from jobs.common import fs
    from jobs.training.champion import compare_with_champion
    from jobs.training.checkpoints import MODEL_FILE
    from jobs.training.figures import log_curves
    from jobs.training.registry import log_and_register

    filesystem, _ = fs.resolve(cfg.storage_path, endpoint_url=cfg.s3_endpoint_url)
    checkpoint = ray.train.Checkpoint(
        row.checkpoint_path, filesystem if fs.is_remote(cfg.storage_path) else None
    )
    client = mlflow.MlflowClient(tracking_uri)
    status = client.get_run(row.run_id).info.status
    with tempfile.TemporaryDirectory() as scratch:
        local = Path(scratch) / MODEL_FILE
        with checkpoint.as_directory() as folder:
            shutil.copy(Path(folder) / MODEL_FILE, local)
        miou = float(row.val_mean_iou)
        comparison = None  # below --min-miou the gate refuses first
        if math.isfinite(miou) and miou >= cfg.min_miou:
            comparison = compare_with_champion(
                cfg.register_as,
                cfg.alias,
                candidate=local,
                training_data=data,
                tracking_uri=tracking_uri,
                endpoint_url=cfg.s3_endpoint_url,
            )
        mlflow.set_experiment(experiment_id=client.get_run(row.run_id).info.experiment_id)
        with mlflow.start_run(run_id=row.run_id):
            log_curves(tracking_uri, row.run_id)
            reg = log_and_register(
                run_id=row.run_id,
                checkpoint_path=local,
                name=cfg.register_as,
                alias=cfg.alias,
                val_miou=miou,
                epoch=int(row.best_epoch),
                min_miou=cfg.min_miou,
                force_alias=cfg.force_alias,
                tags={
                    "data_root": data.root,
                    "run_name": f"{cfg.run_name}-{row.trial_id}",
                    "tune_parent_run_id": parent_run_id,
                    "tune_trial_id": row.trial_id,
                },
                comparison=comparison,
                tracking_uri=tracking_uri,
            )
            mlflow.set_tags({"model_uri": reg.model_uri, "best_epoch": str(row.best_epoch)})
    if status != "FINISHED":  # start_run ended it FINISHED; a stopped trial stays as it was
        client.set_terminated(row.run_id, status=status)
    return reg
