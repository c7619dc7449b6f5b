"""One trial of the search, as Ray Tune runs it: the train job's TorchTrainer (built by
`jobs.training.trainer.make_trainer`, the loop of `jobs.training.worker_loop`) for the trial's
settings, logging to its own MLflow child run of the search's parent run, with Ray Tune's
`TuneReportCallback` forwarding rank 0's per-epoch metrics (and checkpoint path) to Tune.

Ray 2.60 runs Train V2: Tune drives this function (`Tuner(run_trial)`), which builds and fits a
trainer; `Tuner(trainer)` is gone. When ASHA stops the trial, Tune ends this function's actor
while `fit()` runs; its child run stays RUNNING and the driver closes it
(`jobs.tuning.results.close_child_runs`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from jobs.training import tracking
from jobs.training.config import TrainJobConfig
from jobs.training.data_checks import TrainingData
from jobs.tuning.space import trial_config

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
"""MLflow's own tag of a child run (the UI nests the run under its parent)."""
TRIAL_TAG = "unet_ray.tune.trial_id"
"""The Ray Tune trial id of a child run."""
SEARCH_TAG = "unet_ray.tune.search"
"""The search's name, on the parent and every child run."""
TRIAL_PARAM_PREFIX = "trial."
"""Params of a child run that hold the trial's sampled values (trial.lr, trial.base_width...)."""


@dataclass
class TrialContext:
    """What every trial takes from the driver (put once in the object store)."""

    base: TrainJobConfig
    """The train job's config, with machine defaults and the workers' device filled in."""
    data: TrainingData
    """The checked training data with its fitted preprocessing."""
    class_weights: dict[float, list[float] | None]
    """Cross-entropy class weights by --class-balance value, counted once on the driver."""
    tracking_uri: str
    parent_run_id: str
    """The search's MLflow run."""
    experiment_id: str
    search_name: str
    """Name of the search (its parent run and Tune experiment); trial runs are <name>-<trial id>."""
    owned: bool
    """The driver started the local Ray (whose runtime_env already reaches every task)."""
    system_metrics: dict[str, Any] | None = None
    """MLflow's system-metrics settings for the workers; None: off."""


def start_child_run(context: TrialContext, trial_id: str, run_name: str) -> str:
    """A new MLflow run under the search's parent run, tagged with the trial id."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(context.tracking_uri)
    run = client.create_run(
        context.experiment_id,
        run_name=run_name,
        tags={
            **tracking.source_tags(),
            PARENT_TAG: context.parent_run_id,
            TRIAL_TAG: trial_id,
            SEARCH_TAG: context.search_name,
            tracking.RUN_NAME_TAG: run_name,
            "data_root": context.data.root,
        },
    )
    return run.info.run_id


def join_search_ledger() -> None:
    """Make this trial's datasets record into the search's bad-pair ledger, opened once by the
    driver (`jobs.training.bad_pairs`: one per Ray job, shared by runs that may run at once, as
    the fold runs share theirs): a pair that fails counts once for the search, and a trial never
    replaces the ledger a trial running beside it counts with."""
    import ray

    from jobs.training import bad_pairs

    name = bad_pairs.ledger_name()
    bad_pairs._OPEN[name] = ray.get_actor(name)  # the driver's handle keeps it alive
    bad_pairs._SHARED.add(name)  # open_ledger() hands this one out instead of a new one


def run_trial(values: dict[str, Any], context: TrialContext) -> None:
    """Tune's trainable: train one sample of the space (``values``) with Ray Train."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from jobs.training.class_balance import class_weights
    from jobs.training.trainer import make_loop_config, make_trainer

    trial_id = ray.tune.get_context().get_trial_id()
    name = f"{context.search_name}-{trial_id}"
    cfg = trial_config(context.base, values, run_name=name)
    balance = cfg.train.class_balance
    if balance in context.class_weights:
        weights = context.class_weights[balance]
    else:  # a continuous class_balance domain: counted for this value
        weights = class_weights(
            context.data, balance, seed=cfg.train.seed, endpoint_url=cfg.s3_endpoint_url
        )
    join_search_ledger()
    uri = context.tracking_uri
    run_id = start_child_run(context, trial_id, name)
    loop_config = make_loop_config(
        cfg, context.data, tracking_uri=uri, run_id=run_id, class_weights=weights
    )
    loop_config["system_metrics"] = context.system_metrics
    trainer = make_trainer(cfg, context.data, loop_config, context.owned)
    # The trainer reads its RunConfig's callbacks when fit() starts the controller.
    trainer.run_config.callbacks = [*(trainer.run_config.callbacks or []), TuneReportCallback()]
    tracking.log_run_inputs(
        uri,
        run_id,
        params={
            **tracking.run_params(cfg.to_flat(), loop_config),
            **{f"{TRIAL_PARAM_PREFIX}{k}": v for k, v in values.items()},
        },
        artifacts={"config.json": loop_config},
    )
    log.info("trial %s: %s (MLflow run %s)", trial_id, values, run_id)
    try:
        trainer.fit()
    except Exception:
        tracking.finish_run(uri, run_id, "FAILED")
        raise
    tracking.finish_run(uri, run_id)
