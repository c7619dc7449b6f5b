"""One training run, from checked data to a registered model: what `jobs/train.py` calls.

Steps: connect to Ray and refuse local paths the cluster's nodes cannot see, check the data on
the driver (`DataValidationError` naming the bad files), decide the workers' device, start or
resume the MLflow run (its source and git tags, the training and validation sets as dataset
inputs), train with TorchTrainer (`jobs.training.worker_loop` on every worker, each logging
system metrics when --system-metrics is on), then publish: curves and a validation panel, the
best checkpoint registered and its alias gated (`jobs.training.publish`). With --folds K the K
fold runs, their out-of-fold score and their ensemble are `jobs.training.fold_runs`.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import ray
from ray.train.torch import TorchTrainer

from jobs.common.cluster_info import (
    NODE_START_TIMEOUT_S,
    ClusterView,
    cluster_view,
    release_capacity,
    wait_for_cpus,
)
from jobs.common.devices import check_gpu_node
from jobs.common.logs import quiet_ray_logs
from jobs.common.mlflow_store import reachable_tracking_uri
from jobs.common.path_guard import LocalPathError
from jobs.common.ray_cluster import connect_ray
from jobs.training import tracking
from jobs.training.class_balance import class_weights
from jobs.training.config import TrainJobConfig
from jobs.training.data_checks import (
    DataValidationError,
    TrainingData,
    check_with_ray,
    gather_training_data,
)
from jobs.training.defaults import with_defaults
from jobs.training.init_from import Start, prepare_start
from jobs.training.preflight import (
    decide_workers,
    dry_run_summary,
    path_problems,
    with_system_metrics,
)
from jobs.training.publish import publish
from jobs.training.trainer import check_sampled_set, make_loop_config, make_trainer


def gather(cfg: TrainJobConfig):
    """The training data as the train job pairs, splits and checks it (`gather_training_data`)."""
    return gather_training_data(
        cfg.data,
        val_data=cfg.val_data,
        class_map_path=cfg.class_map,
        val_fraction=cfg.train.val_fraction,
        seed=cfg.train.seed,
        group_by=cfg.group_by,
        in_channels=cfg.in_channels,
        num_workers=cfg.worker_range[1],  # every worker of the largest group gets a shard
        check_limit=cfg.check_limit,
        endpoint_url=cfg.s3_endpoint_url,
        decode=cfg.decode_options,
    )


def dry_run(cfg: TrainJobConfig, view: ClusterView, problems: list[str]) -> dict:
    """Resolve what the run would use; nothing is trained or written."""
    demo = cfg.data is None
    cfg = with_defaults(cfg)
    cfg, choice = decide_workers(view, cfg, probe=False)  # a dry run starts no GPU node
    data = None
    if not (demo and not Path(cfg.data, "classes.json").is_file()):  # else: made by a real run
        try:
            data, _ = gather(cfg)
        except (DataValidationError, OSError, ValueError) as exc:
            problems = [*problems, f"data: {exc}"]
    return dry_run_summary(cfg, view, choice, data, problems)


def start_run(
    cfg: TrainJobConfig,
    data: TrainingData,
    weights: list[float] | None,
    uri: str,
    owned: bool,
    *,
    artifacts: dict,
    tags: dict[str, str] | None = None,
    start: Start | None = None,
) -> tuple[str, TorchTrainer]:
    """Start (or resume) the MLflow run of ``cfg.run_name`` with its params, ``artifacts``
    (split.json...) and data inputs, and build its TorchTrainer; returns (run id, trainer)."""
    run_id = tracking.start_or_resume_run(
        tracking_uri=uri,
        experiment=cfg.experiment,
        run_name=cfg.run_name,
        tags={"data_root": data.root, "storage_path": cfg.storage_path, **(tags or {})},
    )
    loop_config = make_loop_config(
        cfg, data, tracking_uri=uri, run_id=run_id, class_weights=weights
    )
    loop_config["system_metrics"] = tracking.system_metrics_settings(cfg.system_metrics)
    if start is not None:  # the starting weights through the object store; lineage tags
        loop_config["start"] = start.loop_entry()
        start.tag_run(uri, run_id)
    trainer = make_trainer(cfg, data, loop_config, owned)
    tracking.log_run_inputs(
        uri,
        run_id,
        params={
            **tracking.run_params(cfg.to_flat(), loop_config),
            **(start.params() if start else {}),
        },
        artifacts={"config.json": loop_config, **artifacts},
        data=data,
    )
    return run_id, trainer


def run_training(cfg: TrainJobConfig) -> dict:
    """Train and register (or, with --dry-run, only resolve what a run would use); returns the
    job's JSON summary. Machine defaults are filled here (`jobs.training.defaults.with_defaults`), after the
    cluster is known: on a multi-node cluster every local path is refused first."""
    started = time.time()
    owned = connect_ray(cfg.ray_address)
    quiet_ray_logs(cfg.log_level)
    view = cluster_view(cfg.ray_address)
    try:
        problems = path_problems(view, cfg)
        if cfg.dry_run:
            return dry_run(cfg, view, problems)
        if problems:
            raise LocalPathError("; ".join(problems))
        uri = reachable_tracking_uri(cfg.tracking_uri)  # refused before any work
        cfg = with_defaults(cfg)
        planned = None
        if cfg.plan:  # the plan fills what flags and --config leave open (docs/planning.md)
            from jobs.planning.training import plan_training

            planned = plan_training(cfg)
            planned_flat = {**cfg.to_flat(), **planned.applied}
            cfg = dataclasses.replace(TrainJobConfig.from_flat(planned_flat), given=cfg.given)
        cfg, start = prepare_start(cfg, uri)  # --init-from, --encoder-weights: read once here
        if cfg.folds:  # every fold of one whole set, checked and preprocessed once
            from jobs.training.fold_runs import gather_whole

            data, unchecked = gather_whole(cfg)
        else:
            data, unchecked = gather(cfg)
        data = start.preprocessing(cfg, data)  # the parent's, or fitted (ImageNet's: pretrained)
        check_sampled_set(cfg, data)
        cfg, _ = decide_workers(view, cfg)
        if cfg.use_gpu:  # fail here, naming the node, rather than in Ray Train's NCCL setup
            check_gpu_node(view, what="training workers", timeout=NODE_START_TIMEOUT_S)
        if unchecked and cfg.full_check:
            # Ray Data submits no task while the cluster has no CPU (a KubeRay head offers
            # none): ask the autoscaler for one first, or fail saying what is missing.
            wait_for_cpus(view, 1.0, timeout=NODE_START_TIMEOUT_S)
            check_with_ray(data, unchecked, endpoint_url=cfg.s3_endpoint_url)
        if cfg.train.class_balance:
            wait_for_cpus(view, 1.0, timeout=NODE_START_TIMEOUT_S)  # as for the check above
        weights = class_weights(
            data, cfg.train.class_balance, seed=cfg.train.seed, endpoint_url=cfg.s3_endpoint_url
        )
        cfg = with_system_metrics(cfg, view)  # on by default on a cluster, off on a local Ray
        extra = planned.artifacts() if planned else {}
        if cfg.folds:  # K-fold cross-validation (docs/ensembles.md)
            from jobs.training import fold_runs

            if cfg.fold is None:  # the K runs, their out-of-fold score and their ensemble
                return fold_runs.run_folds(cfg, data, weights, uri, owned, extra, started, start)
            data, split = fold_runs.one_fold(cfg, data, cfg.fold)
        else:
            split = tracking.split_record(data, cfg.group_by)
        run_id, trainer = start_run(
            cfg, data, weights, uri, owned, artifacts={"split.json": split, **extra}, start=start
        )
        try:
            result = trainer.fit()
        except Exception:
            tracking.finish_run(uri, run_id, "FAILED")
            raise
        with tempfile.TemporaryDirectory() as scratch:
            if cfg.fold is not None and "register_as" not in cfg.given:
                summary = fold_runs.publish_member(cfg, data, result, uri, run_id, Path(scratch))
            else:
                summary = publish(cfg, data, result, uri, run_id, Path(scratch))
        summary["world_size"] = (result.return_value or {}).get("world_size")  # at the end
        summary["seconds"] = round(time.time() - started, 1)
        if planned:
            summary["plan"] = planned.applied
        return summary
    finally:
        release_capacity(view)
        if owned:
            ray.shutdown()
