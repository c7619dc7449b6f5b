"""The MLflow record of a training run: the run is created (or found and resumed) on the
driver, epochs are logged by world rank 0 only, and an epoch already in the run's history is
never logged twice.

Workers do not inherit MLFLOW_* variables from the driver: the driver resolves the tracking
URI (`jobs.common.mlflow_store`) and hands it and the run id to the workers in
train_loop_config. Figures drawn at the end of the run are in `jobs.training.figures`.
"""

from __future__ import annotations

import json
import logging
import time
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
    marked RUNNING."""
    import mlflow
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
        log.info("resuming MLflow run %s (%s) in experiment %r", run_id, run_name, experiment)
        return run_id
    run = client.create_run(experiment_id, run_name=run_name, tags={RUN_NAME_TAG: run_name, **tags})
    log.info("created MLflow run %s (%s) in experiment %r", run.info.run_id, run_name, experiment)
    return run.info.run_id


def log_run_inputs(
    tracking_uri: str, run_id: str, *, params: dict[str, Any], artifacts: dict[str, Any]
) -> None:
    """Params (only those not in the run yet: params are immutable, a resumed run keeps its
    first values and changed ones are reported) and JSON artifacts (rewritten)."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    existing = client.get_run(run_id).data.params
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
    for name, value in artifacts.items():
        client.log_text(run_id, json.dumps(value, indent=2, default=str), name)


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
    }
    return {**flat_config, **derived}


def _span(values: list[int]) -> int | str:
    """One value as is; several as "LOW-HIGH"."""
    return values[0] if len(values) == 1 else f"{min(values)}-{max(values)}"


def split_record(plan) -> dict[str, Any]:
    """The train/validation keys (jobs.validation.DataPlan), logged as split.json."""
    return {
        "root": plan.root,
        "val_root": plan.val_root,
        "val_source": "val_data" if plan.val_root != plan.root else "stem_hash_split",
        "train": [p.key for p in plan.train],
        "val": [p.key for p in plan.val],
    }
