"""What a training run will use, decided on the driver before any work: the paths it may use
on this cluster, the device and resources of its workers, and the `--dry-run` report."""

from __future__ import annotations

import dataclasses
from typing import Any

from jobs.common import resources
from jobs.common.cluster_info import ClusterView, GpuChoice, choose_gpu
from jobs.common.mlflow_store import resolve_tracking_uri, tracking_problem
from jobs.common.path_guard import local_path_problems
from jobs.training.config import TrainJobConfig
from jobs.training.data_checks import TrainingData
from jobs.training.defaults import default_cache_dir


def guarded_paths(cfg: TrainJobConfig) -> dict[str, str | None]:
    """Every flag of ``cfg`` that names a place, with what it resolves to (defaults included:
    the demo set and the checkpoint storage under the cache, the sqlite tracking store)."""
    cache = default_cache_dir()
    try:
        tracking = resolve_tracking_uri(cfg.tracking_uri)
    except ValueError:
        tracking = cfg.tracking_uri
    return {
        "--data" if cfg.data else "--data (omitted: the generated demo set)": cfg.data
        or str(cache / "demo-data"),
        "--val-data": cfg.val_data,
        "--class-map": cfg.class_map,
        "--storage-path" if cfg.storage_path else "--storage-path (default)": cfg.storage_path
        or str(cache / "runs"),
        "--tracking-uri / $MLFLOW_TRACKING_URI": tracking,
    }


def path_problems(view: ClusterView, cfg: TrainJobConfig) -> list[str]:
    return local_path_problems(view, guarded_paths(cfg), shared_fs=cfg.shared_fs)


def decide_workers(
    view: ClusterView, cfg: TrainJobConfig, *, probe: bool = True
) -> tuple[TrainJobConfig, GpuChoice]:
    """``cfg`` with device and cpus_per_worker fixed for this cluster (the flags win); with
    ``probe`` False (dry runs) the device stays auto where only the autoscaler could tell."""
    choice = choose_gpu(view, cfg.use_gpu, what="training workers", probe=probe)
    cpus = cfg.cpus_per_worker or resources.cpus_per_train_worker(
        view, num_workers=cfg.worker_range[1]
    )
    device = ("gpu" if choice.use_gpu else "cpu") if choice.decided else "auto"
    return dataclasses.replace(cfg, device=device, cpus_per_worker=cpus), choice


def with_system_metrics(cfg: TrainJobConfig, view: ClusterView) -> TrainJobConfig:
    """--system-metrics resolved: as given, else on for a cluster and off on a local Ray."""
    if cfg.system_metrics is not None:
        return cfg
    return dataclasses.replace(cfg, system_metrics=not view.local)


def dry_run_summary(
    cfg: TrainJobConfig,
    view: ClusterView,
    choice: GpuChoice | None,
    data: TrainingData | None,
    problems: list[str],
) -> dict[str, Any]:
    """The `--dry-run` JSON: what the run would use, and what would stop it."""
    low, high = cfg.worker_range
    tracking = guarded_paths(cfg)["--tracking-uri / $MLFLOW_TRACKING_URI"]
    unreachable = tracking_problem(tracking) if tracking else None
    per_worker = {
        "CPU": cfg.cpus_per_worker,
        **({"GPU": cfg.gpus_per_worker} if cfg.use_gpu else {}),
    }
    return {
        "dry_run": True,
        "device": {True: "gpu", False: "cpu", None: "auto"}[cfg.use_gpu],
        "device_reason": choice.reason if choice else None,
        "num_workers": low if low == high else f"{low}-{high}",  # as --num-workers takes it
        "resources_per_worker": per_worker,
        "cluster": view.describe(),
        "data": data.root if data else cfg.data,
        "val_data": data.val_root if data else cfg.val_data,
        "pairs": {"train": len(data.train), "val": len(data.val)} if data else None,
        "classes": data.class_map.names if data else None,
        "in_channels": data.in_channels if data else cfg.in_channels,
        "storage_path": cfg.storage_path,
        "run_name": cfg.run_name,
        "tracking_uri": tracking,
        "experiment": cfg.experiment,
        "system_metrics": with_system_metrics(cfg, view).system_metrics,
        "register_as": f"{cfg.register_as}@{cfg.alias}",
        "problems": problems + ([unreachable] if unreachable else []),
    }
