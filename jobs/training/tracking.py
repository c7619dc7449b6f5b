"""The MLflow record of a training run: the run is created (or found and resumed) on the
driver, epochs are logged by world rank 0 only, and an epoch already in the run's history is
never logged twice.

Workers do not inherit MLFLOW_* variables from the driver: the driver resolves the tracking
URI (`jobs.common.mlflow_store`) and hands it and the run id to the workers in
train_loop_config. A new run gets MLflow's own run-context tags (source, user, git), as
`mlflow.start_run` records them; the training and validation sets are logged as dataset inputs
(`jobs.training.mlflow_inputs`); every worker may log system metrics. Figures drawn at the end of
the run are in `jobs.training.figures`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from unet_core.schedule import steps_per_epoch

log = logging.getLogger(__name__)

RUN_NAME_TAG = "unet_ray.run_name"
EPOCH_KEY = "epoch"
"""Metric logged last in each epoch's batch; its history says which epochs are in the run."""


def start_or_resume_run(
    *, tracking_uri: str, experiment: str, run_name: str, tags: dict[str, str]
) -> str:
    """The id of the run tagged with this run name in the experiment, else of a new one;
    marked RUNNING, with MLflow's source and git tags of the code running now (`source_tags`:
    a resumed run takes those of the code that resumes it)."""
    import mlflow
    from mlflow.entities import RunTag
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if runs:
        run_id = runs[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in source_tags().items()])
        log.info("resuming MLflow run %s (%s) in experiment %r", run_id, run_name, experiment)
        return run_id
    run = client.create_run(
        experiment_id, run_name=run_name, tags={**source_tags(), RUN_NAME_TAG: run_name, **tags}
    )
    log.info("created MLflow run %s (%s) in experiment %r", run.info.run_id, run_name, experiment)
    return run.info.run_id


def source_tags() -> dict[str, str]:
    """MLflow's run-context tags, as `mlflow.start_run` resolves them: mlflow.source.name and
    .type, mlflow.user, and mlflow.source.git.commit/.branch/.repoURL of the entry script's
    checkout. An entry point outside a checkout (a console script, pytest) takes the git tags
    of the checkout holding this package, when there is one (`ray job submit` uploads none)."""
    from mlflow.tracking.context.registry import resolve_tags
    from mlflow.utils import git_utils
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_BRANCH, MLFLOW_GIT_COMMIT, MLFLOW_GIT_REPO_URL

    tags = resolve_tags()
    if not tags.get(MLFLOW_GIT_COMMIT):
        here = str(Path(__file__).resolve().parent)
        found = {
            MLFLOW_GIT_COMMIT: git_utils.get_git_commit(here),
            MLFLOW_GIT_BRANCH: git_utils.get_git_branch(here),
            MLFLOW_GIT_REPO_URL: git_utils.get_git_repo_url(here),
        }
        if found[MLFLOW_GIT_COMMIT]:
            tags.update({k: v for k, v in found.items() if v})
    return tags


def log_run_inputs(
    tracking_uri: str,
    run_id: str,
    *,
    params: dict[str, Any],
    artifacts: dict[str, Any],
    data=None,
) -> None:
    """Params (only those not in the run yet: params are immutable, a resumed run keeps its
    first values and changed ones are reported), JSON (or text) artifacts (rewritten) and, given the training
    data (`TrainingData`), its training and validation sets as dataset inputs (those the run lacks: a resumed
    run on the same data logs none; on a changed listing it adds the new one)."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    if data is not None:
        from jobs.training.mlflow_inputs import dataset_inputs, split_datasets

        fresh_inputs = dataset_inputs(split_datasets(data), run.inputs.dataset_inputs)
        if fresh_inputs and run.inputs.dataset_inputs:
            log.warning(
                "resumed run: its data changed since it started; logging %s beside %s",
                [d.dataset.name + "@" + d.dataset.digest for d in fresh_inputs],
                [d.dataset.name + "@" + d.dataset.digest for d in run.inputs.dataset_inputs],
            )
        if fresh_inputs:
            client.log_inputs(run_id, datasets=fresh_inputs)
    existing = run.data.params
    fresh, changed = [], []
    for key, value in sorted(params.items()):
        text = json.dumps(value) if isinstance(value, (list, dict, tuple)) else str(value)
        text = text[:6000]
        if key not in existing:
            fresh.append(Param(key, text))
        elif existing[key] != text:
            changed.append(f"{key}: {existing[key]} -> {text}")
    for i in range(0, len(fresh), 100):
        client.log_batch(run_id, params=fresh[i : i + 100])
    if changed:
        log.warning("resumed run keeps its first parameter values; changed now: %s", changed)
    for name, value in artifacts.items():  # text as it is (a YAML recipe), the rest as JSON
        text = value if isinstance(value, str) else json.dumps(value, indent=2, default=str)
        client.log_text(run_id, text, name)


def metric_histories(tracking_uri: str, run_id: str, keys: list[str]) -> dict[str, list[float]]:
    """Per-key values ordered by step (one per epoch), from the run's history."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    out = {}
    for key in keys:
        history = sorted(
            client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp)
        )
        by_step = {m.step: m.value for m in history}  # should one step hold two, keep the last
        out[key] = [by_step[s] for s in sorted(by_step)]
    return out


def run_keys(run_id: str, run_name: str, experiment: str, tracking_uri: str) -> dict[str, str]:
    """The MLflow run keys that open every job summary."""
    return {
        "run_id": run_id,
        "run_name": run_name,
        "experiment": experiment,
        "tracking_uri": tracking_uri,
    }


def finish_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri).set_terminated(run_id, status=status)


class EpochLogger:
    """Per-epoch MLflow logging from world rank 0; a no-op on the other ranks.

    Idempotent: on creation rank 0 reads which epochs the run already holds (a resumed or
    restarted run recomputes the epoch it was in), and `log_epoch` skips those.
    """

    def __init__(self, tracking_uri: str | None, run_id: str | None, rank: int) -> None:
        self.active = rank == 0 and bool(tracking_uri and run_id)
        self.run_id = run_id
        self._client = None
        self._logged: set[int] = set()
        if self.active:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri)
            self._logged = {int(m.step) for m in self._client.get_metric_history(run_id, EPOCH_KEY)}

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Log `metrics` at step `epoch` unless the run has that epoch; True when logged."""
        if not self.active or epoch in self._logged:
            return False
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), now, epoch)
            for k, v in metrics.items()
            if v is not None and k != EPOCH_KEY
        ]
        batch.append(Metric(EPOCH_KEY, float(epoch), now, epoch))  # last: marks the epoch done
        self._client.log_batch(self.run_id, metrics=batch)
        self._logged.add(epoch)
        return True

    def append_tag(self, key: str, value: str) -> None:
        """Add `value` to a comma-separated tag (e.g. the epochs a run resumed from)."""
        if not self.active:
            return
        current = self._client.get_run(self.run_id).data.tags.get(key)
        self._client.set_tag(self.run_id, key, f"{current},{value}" if current else value)


# --- system metrics (every worker) -------------------------------------------------------------


def system_metrics_settings(enabled: bool) -> dict[str, Any] | None:
    """The loop config's `system_metrics`: None when off, else MLflow's sampling settings
    from the driver's environment ($MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL, default 10 s;
    $MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING, default 1), which workers do not inherit."""
    if not enabled:
        return None
    from mlflow.environment_variables import (
        MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING,
        MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL,
    )

    return {
        "sampling_interval": MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL.get() or 10.0,
        "samples_before_logging": MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING.get() or 1,
    }


def start_system_metrics(
    settings: dict[str, Any] | None,
    tracking_uri: str | None,
    run_id: str | None,
    *,
    node_id: str | None,
):
    """MLflow's SystemMetricsMonitor of this worker, started (`.finish()` it), or None when
    off. Metrics are system/<node_id>/cpu_utilization_percentage and the like (no node id:
    system/...); a restarted worker continues after the steps the run holds. A worker that
    cannot monitor (no psutil) trains on, with a warning."""
    if not (settings and tracking_uri and run_id):
        return None
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(
            run_id,
            sampling_interval=float(settings["sampling_interval"]),
            samples_before_logging=int(settings["samples_before_logging"]),
            resume_logging=True,
            node_id=node_id,
            tracking_uri=tracking_uri,
        )
    except Exception as exc:  # noqa: BLE001 - monitoring must never stop training
        log.warning("system metrics are off on this worker: %s: %s", type(exc).__name__, exc)
        return None
    monitor.start()
    return monitor


# --- records of the run (driver) --------------------------------------------------------------


def run_params(flat_config: dict[str, Any], loop_config: dict[str, Any]) -> dict[str, Any]:
    """The resolved job config plus what was derived from the data and the cluster. With a
    range of workers the global batch and the steps per epoch are ranges too ("8-16"); the
    world size of each epoch is its `world_size` metric."""
    batch, rows = loop_config["train"]["batch_size"], loop_config["train_rows"]
    worlds = sorted(set(loop_config["worker_range"]))
    steps = sorted({steps_per_epoch(rows, world_size=w, batch_size=batch) for w in worlds})
    derived = {
        "in_channels": loop_config["model"]["in_channels"],
        "num_classes": loop_config["model"]["num_classes"],
        "class_names": [c["name"] for c in loop_config["class_map"]["classes"]],
        "train_rows": rows,
        "global_batch_size": _span([batch * w for w in worlds]),
        "steps_per_epoch": _span(steps),
        "use_gpu": loop_config.get("use_gpu"),
        "resources_per_worker": loop_config.get("resources_per_worker"),
        "preprocess": loop_config["preprocess"],
        "class_weights": [round(w, 4) for w in loop_config.get("class_weights") or []] or None,
    }
    return {**flat_config, **derived}


def _span(values: list[int]) -> int | str:
    """One value as is; several as "LOW-HIGH"."""
    return values[0] if len(values) == 1 else f"{min(values)}-{max(values)}"


def split_record(data, group_by: str | None = None) -> dict[str, Any]:
    """The train/validation keys (`jobs.training.data_checks.TrainingData`), logged as
    split.json; with --group-by, its pattern and each group's side ("train" or "val")."""
    record = {
        "root": data.root,
        "val_root": data.val_root,
        "val_source": "val_data" if data.val_root != data.root else "stem_hash_split",
        "train": [p.key for p in data.train],
        "val": [p.key for p in data.val],
    }
    if group_by is not None and data.val_root == data.root:  # groups of the --val-fraction split
        from jobs.planning.names import grouping
        from unet_core.data import pair_group

        sides = [(p.key, "train") for p in data.train] + [(p.key, "val") for p in data.val]
        groups = grouping([k for k, _ in sides], group_by)
        record["group_by"] = group_by
        record["groups"] = dict(sorted((pair_group(k, groups), side) for k, side in sides))
    return record
