"""The driver's side of Ray Train: the plain-data config every worker gets, and the
TorchTrainer over the training datasets (scaling, storage, failures, checkpoints)."""

from __future__ import annotations

import dataclasses
from typing import Any

from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from jobs.common import fs
from jobs.common.ray_cluster import data_remote_args, forwarded_env
from jobs.common.resources import worker_resources
from jobs.training.config import TrainJobConfig
from jobs.training.data_checks import DataValidationError, TrainingData
from jobs.training.datasets import TRAIN, ExactValidationDataConfig, build_train_val
from jobs.training.worker_loop import train_loop_per_worker
from unet_core.config import PreprocessConfig

SAMPLED_SET_LIMIT_GIB = 4.0
"""Most decoded training data (GiB) that --samples-per-epoch may hold on every worker."""


def check_sampled_set(cfg: TrainJobConfig, data: TrainingData) -> None:
    """--samples-per-epoch keeps the whole decoded training set on every worker: refuse a set
    too large for that, before anything starts."""
    if not cfg.train.samples_per_epoch:
        return
    gib = len(data.train) * data.mean_pixels * (data.in_channels + 1) / 2**30
    if gib > SAMPLED_SET_LIMIT_GIB:
        raise DataValidationError(
            f"--samples-per-epoch {cfg.train.samples_per_epoch} holds the whole training set on "
            f"every worker: {len(data.train)} pairs decode to about {gib:.1f} GiB, above "
            f"{SAMPLED_SET_LIMIT_GIB:g} GiB; for a set this large leave --samples-per-epoch at 0 "
            "(every image once per epoch, sharded over the workers)"
        )


def make_loop_config(
    cfg: TrainJobConfig,
    data: TrainingData,
    *,
    tracking_uri: str,
    run_id: str,
    class_weights: list[float] | None = None,
) -> dict[str, Any]:
    """train_loop_config from the job config and the training data: plain data, the same for every
    rank. What depends on the world size (steps per epoch, the global batch) is computed on the
    workers, which know how many of them an elastic run started. ``class_weights``: the
    cross-entropy's, one per class (`jobs.training.class_balance`); None: all 1."""
    model_config = dataclasses.replace(
        cfg.model, in_channels=data.in_channels, num_classes=data.class_map.num_classes
    )
    return {
        "train": cfg.train.to_dict(),
        "model": model_config.to_dict(),
        "preprocess": (
            data.preprocess or PreprocessConfig.for_channels(data.in_channels)
        ).to_dict(),
        "class_map": data.class_map.to_dict(),
        # split in equal shards over the workers running, or the crops of a sampled epoch
        "train_rows": cfg.train.samples_per_epoch or len(data.train),
        "eval_batch_size": max(1, min(cfg.train.batch_size, 8)),
        "class_weights": class_weights,
        "num_workers": cfg.num_workers,  # as given: N or "MIN-MAX"
        "worker_range": list(cfg.worker_range),
        "torch_threads": cfg.torch_threads,
        "amp": cfg.amp,
        "log_level": cfg.log_level,
        "max_bad_pairs": cfg.allowed_bad_pairs(len(data.train) + len(data.val)),
        "run_name": cfg.run_name,
        "tracking_uri": tracking_uri,
        "run_id": run_id,
    }


def make_trainer(
    cfg: TrainJobConfig, data: TrainingData, loop_config: dict, owned: bool
) -> TorchTrainer:
    """TorchTrainer over the training data; storage, failures and checkpoints from the config.
    ``owned``: this job started the local Ray, whose runtime_env already reaches every task."""
    low, high = cfg.worker_range
    use_gpu = bool(cfg.use_gpu)  # decided on the driver: jobs.training.preflight.decide_workers
    resources = worker_resources(
        use_gpu=use_gpu,
        cpus_per_worker=cfg.cpus_per_worker or 1.0,
        gpus_per_worker=cfg.gpus_per_worker,
    )
    built = build_train_val(
        data,
        seed=cfg.train.seed,
        endpoint_url=cfg.s3_endpoint_url,
        cache=cfg.cache_data,
        ray_remote_args={} if owned else data_remote_args(),
    )
    filesystem, storage = fs.resolve(cfg.storage_path, endpoint_url=cfg.s3_endpoint_url)
    loop_config.update(use_gpu=use_gpu, resources_per_worker=resources)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            # a (MIN, MAX) tuple turns on Ray Train's elastic scaling policy
            num_workers=high if low == high else (low, high),
            use_gpu=use_gpu,
            resources_per_worker=resources,
        ),
        run_config=RunConfig(
            name=cfg.run_name,
            storage_path=storage,
            storage_filesystem=filesystem if fs.is_remote(cfg.storage_path) else None,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.keep_checkpoints,
                checkpoint_score_attribute="val_miou",
                checkpoint_score_order="max",
            ),
            worker_runtime_env={} if owned else {"env_vars": forwarded_env()},
            logging_config=LoggingConfig(
                log_level="DEBUG" if cfg.log_level == "DEBUG" else "WARNING"
            ),
        ),
        datasets=built,
        # sampled epochs draw from the whole training set on every worker
        dataset_config=ExactValidationDataConfig(
            whole=(TRAIN,) if cfg.train.samples_per_epoch else ()
        ),
    )
