"""A search on the cluster: what `jobs/tune.py` calls.

Steps, as the train job takes them (`jobs.training.job`): connect to Ray and refuse local paths
the nodes cannot see; check the data once on the driver and fit its preprocessing; decide the
workers' device and CPUs (shared by the trials running at once); count the class weights of
every --class-balance value the space holds; open the search's MLflow parent run. Then Ray
Tune runs the trials (`jobs.tuning.trial.run_trial`, each a Ray Train run logging to its own
child run) under ASHA, which stops the weak ones after --grace-epochs, 2 x that, ...; the best
trial's checkpoint is registered through the train job's alias gate, and the parent run
records the best trial, its config and the table of trials (`jobs.tuning.results`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any

import ray

from jobs.common.cluster_info import (
    NODE_START_TIMEOUT_S,
    ClusterView,
    cluster_view,
    release_capacity,
    wait_for_cpus,
)
from jobs.common.logs import quiet_ray_logs
from jobs.common.mlflow_store import reachable_tracking_uri
from jobs.common.path_guard import LocalPathError
from jobs.common.ray_cluster import connect_ray
from jobs.common.resources import cpus_per_train_worker
from jobs.training import tracking
from jobs.training.config import TrainJobConfig
from jobs.training.data_checks import check_with_ray
from jobs.training.defaults import with_defaults
from jobs.training.job import gather
from jobs.training.preflight import decide_workers, path_problems, with_system_metrics
from jobs.tuning import leaks
from jobs.tuning.config import REDUCTION_FACTOR, TuneJobConfig
from jobs.tuning.space import SearchSpace, default_space, load_space

log = logging.getLogger(__name__)

TRIAL_DRIVER_CPUS = 0.01
"""CPUs Tune reserves for a trial's own function (it only waits on its Ray Train controller;
the workers reserve theirs in Ray Train's placement group)."""


def concurrency(cfg: TuneJobConfig, train: TrainJobConfig, view: ClusterView, trials: int) -> int:
    """--max-concurrent-trials, else as many trials as the cluster's CPUs (GPUs on GPU) hold
    now beside a quarter of the CPUs (at least 1) kept for Ray Data on a local Ray; at least 1,
    at most the trials."""
    if cfg.max_concurrent_trials:
        return min(cfg.max_concurrent_trials, trials)
    workers = train.worker_range[1]
    cpus = view.resources.get("CPU", 1.0)
    if view.local:
        cpus -= max(1.0, 0.25 * cpus)
    fits = cpus // (workers * (train.cpus_per_worker or 1.0))
    if train.use_gpu:
        fits = min(fits, view.gpus_now // (workers * train.gpus_per_worker))
    return int(max(1, min(trials, fits)))


def decide_trial_workers(
    cfg: TuneJobConfig, train: TrainJobConfig, view: ClusterView, trials: int
) -> tuple[TrainJobConfig, int]:
    """The base config with device and CPUs per worker fixed, and the trials run at once. On
    a local Ray without --cpus-per-worker, the trials running at once share what the train job
    would give one run."""
    running = cfg.max_concurrent_trials or 1
    if view.local and not train.cpus_per_worker:
        share = cpus_per_train_worker(view, num_workers=train.worker_range[1] * running)
        train = dataclasses.replace(train, cpus_per_worker=share)
    train, _ = decide_workers(view, train)
    return train, concurrency(cfg, train, view, trials)


def class_balance_values(space: SearchSpace, base: TrainJobConfig) -> list[float]:
    """The --class-balance values a trial can take (counted once on the driver); a continuous
    domain is counted in each trial instead."""
    for dim in space.dimensions:
        if dim.key == "class_balance":
            return (
                [float(v) for v in dim.values] if dim.domain in ("choice", "grid", "fixed") else []
            )
    return [base.train.class_balance]


def dry_run(cfg: TuneJobConfig, view: ClusterView, space: SearchSpace | None) -> dict[str, Any]:
    """The resolved space and trial count; nothing is trained or written."""
    train = dataclasses.replace(with_defaults(cfg.train), given=cfg.train.given)
    trials = space.trial_count(cfg.trials) if space else cfg.trials  # no grid by default
    train, running = decide_trial_workers(cfg, train, view, trials)
    space = space or default_space(use_gpu=bool(train.use_gpu), given=_given(train))
    problems = path_problems(view, train)
    return {
        "dry_run": True,
        "search_space": space.describe(),
        "search_space_file": cfg.search_space,
        "trials": trials,
        "max_concurrent_trials": running,
        "grace_epochs": cfg.grace_epochs,
        "epochs": train.train.epochs,
        "metric": cfg.metric,
        "mode": cfg.mode,
        "device": "gpu" if train.use_gpu else "cpu",
        "num_workers": train.num_workers,
        "resources_per_worker": {"CPU": train.cpus_per_worker},
        "data": train.data,
        "register_as": f"{train.register_as}@{train.alias}",
        "problems": problems,
    }


def _given(train: TrainJobConfig) -> dict[str, Any]:
    flat = train.to_flat()
    return {k: flat[k] for k in train.given if k in flat}


def run_search(cfg: TuneJobConfig) -> dict[str, Any]:
    """Run the search (or, with --dry-run, resolve it); returns the job's JSON summary."""
    started = time.time()
    train = cfg.train
    owned = connect_ray(train.ray_address)
    quiet_ray_logs(train.log_level)
    view = cluster_view(train.ray_address)
    try:
        space = load_space(cfg.search_space) if cfg.search_space else None
        if train.dry_run:
            return dry_run(cfg, view, space)
        problems = path_problems(view, train)
        if problems:
            raise LocalPathError("; ".join(problems))
        uri = reachable_tracking_uri(train.tracking_uri)  # refused before any work
        train = with_defaults(train)
        trials = space.trial_count(cfg.trials) if space else cfg.trials  # no grid by default
        data, unchecked = gather(train)
        from jobs.training.preprocess_fit import fit_training_preprocessing
        from jobs.training.trainer import check_sampled_set

        data = fit_training_preprocessing(train, data)
        check_sampled_set(train, data)
        train, running = decide_trial_workers(cfg, train, view, trials)
        space = space or default_space(use_gpu=bool(train.use_gpu), given=_given(train))
        if unchecked and train.full_check:
            wait_for_cpus(view, 1.0, timeout=NODE_START_TIMEOUT_S)
            check_with_ray(data, unchecked, endpoint_url=train.s3_endpoint_url)
        return _search(cfg, train, space, data, uri, view, owned, trials, running, started)
    finally:
        release_capacity(view)
        if owned:
            ray.shutdown()


def _search(cfg, train, space, data, uri, view, owned, trials, running, started) -> dict:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from jobs.common import fs
    from jobs.training.bad_pairs import BadPairsError, open_ledger, read_bad_pairs
    from jobs.training.class_balance import class_weights
    from jobs.tuning import results
    from jobs.tuning.trial import SEARCH_TAG, TrialContext, run_trial

    weights = {}
    for balance in class_balance_values(space, train):
        if balance:
            wait_for_cpus(view, 1.0, timeout=NODE_START_TIMEOUT_S)
        weights[balance] = class_weights(
            data, balance, seed=train.train.seed, endpoint_url=train.s3_endpoint_url
        )
    name = train.run_name
    parent = tracking.start_or_resume_run(
        tracking_uri=uri,
        experiment=train.experiment,
        run_name=name,
        tags={"data_root": data.root, "storage_path": train.storage_path, SEARCH_TAG: name},
    )
    search = {
        "search_space": space.describe(),
        "trials": trials,
        "max_concurrent_trials": running,
        "grace_epochs": cfg.grace_epochs,
        "reduction_factor": REDUCTION_FACTOR,
        "metric": cfg.metric,
    }
    tracking.log_run_inputs(
        uri,
        parent,
        params={**{f"search.{k}": v for k, v in search.items()}, **train.to_flat()},
        artifacts={"search_space.json": space.describe()},
        data=data,
    )
    system = with_system_metrics(train, view).system_metrics
    from mlflow.tracking import MlflowClient

    context = TrialContext(
        base=train,
        data=data,
        class_weights=weights,
        tracking_uri=uri,
        parent_run_id=parent,
        experiment_id=MlflowClient(uri).get_run(parent).info.experiment_id,
        search_name=name,
        owned=owned,
        system_metrics=tracking.system_metrics_settings(bool(system)),
    )
    open_ledger()  # the search's bad-pair ledger, which every trial records into
    states = results.TrialStates()
    filesystem, storage = fs.resolve(train.storage_path, endpoint_url=train.s3_endpoint_url)
    epochs = train.train.epochs
    tuner = tune.Tuner(
        tune.with_resources(
            tune.with_parameters(run_trial, context=context), {"CPU": TRIAL_DRIVER_CPUS}
        ),
        param_space=space.to_tune(),
        tune_config=tune.TuneConfig(
            metric=cfg.report_key,
            mode=cfg.mode,
            scheduler=ASHAScheduler(
                time_attr="training_iteration",
                max_t=epochs,
                grace_period=cfg.grace_epochs,
                reduction_factor=REDUCTION_FACTOR,
            ),
            # TuneConfig(max_concurrent_trials=...) is ignored beside a search algorithm
            # instance (Tune warns): the generator bounds the trials running at once itself.
            search_alg=BasicVariantGenerator(max_concurrent=running, random_state=train.train.seed),
            num_samples=cfg.trials,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            storage_filesystem=filesystem if fs.is_remote(train.storage_path) else None,
            callbacks=[states],
            verbose=0,
        ),
    )
    log.info(
        "search %s: %d trials (%d at once), ASHA on %s (%s) after %d epochs of %d; parent run %s",
        name, trials, running, cfg.metric, cfg.mode, cfg.grace_epochs, epochs, parent,
    )  # fmt: skip
    held_before = leaks.held_by_this_job()
    try:
        grid = tuner.fit()
    except Exception:
        tracking.finish_run(uri, parent, "FAILED")
        raise
    finally:
        released = leaks.release_leftovers(held_before)  # ray#54305: stopped trials' groups
    bad = read_bad_pairs()
    allowed = train.allowed_bad_pairs(len(data.train) + len(data.val))
    if len(bad) > allowed:  # the trials stopped at the end of that epoch
        tracking.finish_run(uri, parent, "FAILED")
        raise BadPairsError.of(bad, allowed)
    rows = results.trial_rows(grid, states.states, key=cfg.report_key, mode=cfg.mode, epochs=epochs)
    children = results.attach_runs(rows, uri, parent)
    results.close_child_runs(rows, children, uri)
    best = results.best_row(rows, cfg.mode)
    reg = None
    if best is not None:
        reg = results.register_best(best, train, data, tracking_uri=uri, parent_run_id=parent)
    client = MlflowClient(uri)
    client.log_text(parent, _json(results.table(rows)), "trials.json")
    if best is not None:
        client.log_text(parent, _json(best.config), "best_config.json")
        client.log_metric(parent, f"best_{cfg.metric}", best.best)
        tags = {"best_trial": best.trial_id, "best_run_id": best.run_id or ""}
        if reg is not None:
            tags["model_uri"] = reg.model_uri
        for key, value in tags.items():
            client.set_tag(parent, key, value)
    failed = [r for r in rows if r.error]
    tracking.finish_run(uri, parent, "FINISHED" if best is not None else "FAILED")
    return {
        **tracking.run_keys(parent, name, train.experiment, uri),
        "trials": len(rows),
        "placement_groups_released": released,
        "trial_states": {
            s: sum(r.status == s for r in rows) for s in sorted({r.status for r in rows})
        },
        "stopped_early": sum(r.stopped_early for r in rows),
        "failed_trials": len(failed),
        "best_trial": best.trial_id if best else None,
        "best_run_id": best.run_id if best else None,
        "best_config": best.config if best else None,
        f"best_{cfg.metric}": _finite(best.best) if best else None,
        "best_val_mean_iou": _finite(best.val_mean_iou) if best else None,
        "registered": (
            {
                "name": reg.name,
                "version": reg.version,
                "alias": reg.alias,
                "alias_set": reg.alias_set,
                "reason": reg.reason,
                "model_uri": reg.model_uri,
            }
            if reg
            else None
        ),  # fmt: skip
        "table": [
            {
                "trial_id": r.trial_id,
                "config": r.config,
                "epochs": r.epochs,
                "stopped_early": r.stopped_early,
                cfg.metric: _finite(r.best),
                "val_mean_iou": _finite(r.val_mean_iou),
                "best_epoch": r.best_epoch,
                "status": r.status,
            }
            for r in rows
        ],  # fmt: skip
        "seconds": round(time.time() - started, 1),
    }


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _json(value: Any) -> str:
    import json

    return json.dumps(value, indent=2, default=str)
