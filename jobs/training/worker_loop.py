"""The loop Ray Train runs on every worker (rank): DDP training, exact validation, checkpoints.

Each epoch: train on this rank's shard; validate this rank's part of the validation set;
all-reduce the confusion matrix and the loss sums, so every rank holds metrics over the whole
set; count the pairs Ray Data could not decode (`jobs.training.bad_pairs`); rank 0 logs the
epoch to MLflow and writes the checkpoint (`jobs.training.checkpoints`); every rank reports
(the same number of times). Above --max-failed-fraction every rank stops after that report, and
the driver fails the job naming the pairs. A restarted worker group resumes from
`ray.train.get_checkpoint()`. `train_loop_config` is built on the driver by
`jobs.training.trainer.make_loop_config`.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
from torch import nn

from jobs.common.devices import require_cuda
from jobs.common.logs import quiet_worker_logs
from jobs.common.mlflow_store import metric_name
from jobs.training.bad_pairs import count_over_ranks
from jobs.training.batches import (
    TrainCollate,
    TrainingImages,
    border_weights,
    eval_batches,
    sampled_batches,
    train_batches,
)
from jobs.training.checkpoints import restore, save_train_checkpoint
from jobs.training.collectives import all_reduce, reduce_eval, sync_buffers
from jobs.training.config import amp_flag
from jobs.training.datasets import TRAIN, VAL
from jobs.training.encoder_init import EncoderFreeze
from jobs.training.init_from import encoder_settings, load_start
from jobs.training.tracking import EpochLogger, start_system_metrics
from unet_core.classes import ClassMap
from unet_core.config import ModelConfig, PreprocessConfig, TrainConfig
from unet_core.engine import evaluate, make_optimizer, make_scheduler, train_one_epoch
from unet_core.losses import SegmentationLoss
from unet_core.metrics import finite_or_none
from unet_core.model import build_model as make_model
from unet_core.precision import autocast_dtype
from unet_core.schedule import steps_per_epoch
from unet_core.transforms import transforms_for_training

log = logging.getLogger(__name__)

RESUMED_TAG = "unet_ray.resumed_from_epochs"


@dataclass
class WorkerSetup:
    """Everything a rank builds from train_loop_config."""

    cfg: TrainConfig
    model_config: ModelConfig
    preprocess: PreprocessConfig
    class_map: ClassMap
    rank: int
    world_size: int
    """The workers running now (an elastic run may start, or resize to, fewer than its MAX)."""
    device: torch.device
    train_rows: int
    """Training pairs, split in equal shards over the workers (the remainder dropped)."""
    amp_dtype: torch.dtype | None = None
    """Autocast dtype of training and validation (--amp); None = fp32."""

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(
            self.train_rows, world_size=self.world_size, batch_size=self.cfg.batch_size
        )

    @property
    def global_batch_size(self) -> int:
        return self.cfg.batch_size * self.world_size

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> WorkerSetup:
        context = ray.train.get_context()
        device = ray.train.torch.get_device()
        return cls(
            cfg=TrainConfig.from_dict(config["train"]),
            model_config=ModelConfig.from_dict(config["model"]),
            preprocess=PreprocessConfig.from_dict(config["preprocess"]),
            class_map=ClassMap.from_dict(config["class_map"]),
            rank=context.get_world_rank(),
            world_size=context.get_world_size(),
            device=device,
            train_rows=int(config["train_rows"]),
            amp_dtype=training_amp_dtype(device, config.get("amp", "auto")),
        )


def training_amp_dtype(device: torch.device, mode: str) -> torch.dtype | None:
    """The autocast dtype for --amp MODE (auto|bf16|off) on ``device``."""
    return autocast_dtype(device, amp_flag(mode), training=True)


# --- epochs ---------------------------------------------------------------------------


class DataWait:
    """Wraps a batch iterator and adds up the time the training loop waited for batches."""

    def __init__(self, batches: Iterator[Any]) -> None:
        self._batches = iter(batches)
        self.seconds = 0.0

    def __iter__(self) -> Iterator[Any]:
        while True:
            start = time.perf_counter()
            try:
                batch = next(self._batches)
            except StopIteration:
                return
            finally:
                self.seconds += time.perf_counter() - start
            yield batch


def build_model(
    setup: WorkerSetup, start: dict | None = None, *, resuming: bool = False
) -> nn.Module:
    """The same initial weights on every rank (seeded; then the run's starting weights, if
    any: `jobs.training.init_from`), then a per-rank seed for dropout."""
    torch.manual_seed(setup.cfg.seed)
    model = make_model(setup.model_config)
    lines = load_start(model, start, resuming=resuming)
    for line in lines if setup.rank == 0 else ():
        log.info(line)
    torch.manual_seed(setup.cfg.seed + setup.rank)
    return model.to(memory_format=torch.channels_last)


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loss_fn: nn.Module,
    setup: WorkerSetup,
    *,
    epoch: int,
    images: TrainingImages | None = None,
) -> dict[str, float]:
    """One epoch on this rank's shard (with samples_per_epoch: this rank's share of the epoch's
    crops drawn from the whole training set, `images`); loss and throughput over all ranks."""
    cfg = setup.cfg
    transform = transforms_for_training(cfg, rgb=setup.preprocess.is_rgb)
    weights = border_weights(cfg, setup.model_config.num_classes)
    if cfg.samples_per_epoch:
        batches = sampled_batches(
            (images or TrainingImages()).load(ray.train.get_dataset_shard(TRAIN)),
            samples=cfg.samples_per_epoch,
            world_size=setup.world_size,
            rank=setup.rank,
            batch_size=cfg.batch_size,
            collate=TrainCollate(
                transform, setup.preprocess, seed=cfg.seed, epoch=epoch, weights=weights
            ),
        )
    else:
        batches = train_batches(
            ray.train.get_dataset_shard(TRAIN),
            batch_size=cfg.batch_size,
            transform=transform,
            preprocess=setup.preprocess,
            seed=cfg.seed,
            epoch=epoch,
            rank=setup.rank,
            weights=weights,
        )
    waits = DataWait(batches)
    stats = train_one_epoch(
        model,
        waits,
        optimizer,
        loss_fn,
        device=setup.device,
        scheduler=scheduler,
        amp_dtype=setup.amp_dtype,
        max_grad_norm=cfg.max_grad_norm,
    )
    sums = all_reduce(
        torch.tensor(
            [stats.loss * stats.images, float(stats.images)],
            dtype=torch.float64,
            device=setup.device,
        )
    )
    seconds = all_reduce(
        torch.tensor([stats.seconds], dtype=torch.float64, device=setup.device), "max"
    )
    images, slowest = int(sums[1]), float(seconds[0])
    return {
        "train_loss": float(sums[0]) / max(1, images),
        "train_images": images,
        "train_seconds": slowest,
        "images_per_second": images / slowest if slowest > 0 else 0.0,
        "data_wait_seconds": waits.seconds,  # rank 0's; near 0 unless input-bound
        "lr": optimizer.param_groups[0]["lr"],
    }


def validate(
    model: nn.Module, loss_fn: nn.Module, setup: WorkerSetup, *, batch_size: int
) -> dict[str, float]:
    """Metrics over the whole validation set (every rank evaluates its part, then all-reduce)."""
    module = getattr(model, "module", model)
    sync_buffers(module)
    stats = evaluate(
        module,
        eval_batches(
            ray.train.get_dataset_shard(VAL),
            batch_size=batch_size,
            preprocess=setup.preprocess,
        ),
        loss_fn,
        num_classes=setup.model_config.num_classes,
        device=setup.device,
        amp_dtype=setup.amp_dtype,
    )
    total = reduce_eval(stats, setup.device)
    summary = total.confusion.summary(setup.class_map.names)
    metrics: dict[str, float] = {
        "val_loss": total.loss,
        "val_images": total.images,
        "val_miou": summary["mean_iou"],
        "val_mean_dice": summary["mean_dice"],
        "val_pixel_accuracy": summary["pixel_accuracy"],
    }
    for name, row in summary["per_class"].items():
        metrics[f"val_iou/{metric_name(name)}"] = row["iou"]
        metrics[f"val_dice/{metric_name(name)}"] = row["dice"]
    return metrics


def _finite(value: float | None) -> float:
    """Ray Train's report and the log line take numbers: NaN/None (no class to score) as 0."""
    return finite_or_none(value) or 0.0


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train entry point; `config` is built on the driver (`trainer.make_loop_config`).
    With `system_metrics` set every rank logs its machine's use to the run, under its own
    node id (worker_<rank>) when the run may have several workers."""
    quiet_worker_logs(config.get("log_level", "INFO"))
    several = int(config.get("worker_range", [1, 1])[-1]) > 1
    rank = ray.train.get_context().get_world_rank()
    monitor = start_system_metrics(
        config.get("system_metrics"),
        config.get("tracking_uri"),
        config.get("run_id"),
        node_id=f"worker_{rank}" if several else None,
    )
    try:
        return _train_loop(config)
    finally:
        if monitor is not None:
            monitor.finish()  # the last samples flushed


def _train_loop(config: dict[str, Any]) -> dict[str, Any]:
    if config.get("use_gpu"):
        require_cuda("a training worker")
    if config.get("torch_threads"):
        torch.set_num_threads(int(config["torch_threads"]))
    setup = WorkerSetup.from_config(config)
    cfg = setup.cfg
    state, checkpoint = None, ray.train.get_checkpoint()
    model = build_model(setup, config.get("start"), resuming=checkpoint is not None)
    if checkpoint is not None:
        state = restore(checkpoint, model)
    lr_scale, frozen_epochs = encoder_settings(config.get("start"))
    # to the device; DDP when world_size > 1 (every parameter in it, frozen ones too)
    model = ray.train.torch.prepare_model(
        model, parallel_strategy_kwargs=EncoderFreeze.ddp_kwargs(frozen_epochs)
    )
    optimizer = make_optimizer(model, cfg, encoder_lr_scale=lr_scale)
    freeze = EncoderFreeze(model, frozen_epochs)
    # The schedule follows the epochs done, not a step count: a checkpoint of another world
    # size (an elastic resize, a rerun with another --num-workers) continues the same curve.
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch=setup.steps_per_epoch)
    start_epoch = 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])  # after the optimizer: it sets the lr
        start_epoch = int(state["epoch"])
    loss_fn = SegmentationLoss(
        setup.model_config.num_classes,
        ce_weight=cfg.ce_weight,
        dice_weight=cfg.dice_weight,
        class_weights=config.get("class_weights"),  # --class-balance, counted by the driver
    )
    logger = EpochLogger(config.get("tracking_uri"), config.get("run_id"), setup.rank)
    images = TrainingImages() if cfg.samples_per_epoch else None
    if setup.rank == 0:
        if start_epoch:
            log.info(
                "resuming from the checkpoint of epoch %d (written by %s workers, now %d)",
                start_epoch,
                state.get("world_size", "?"),
                setup.world_size,
            )
            logger.append_tag(RESUMED_TAG, str(start_epoch))
        log.info(
            "rank 0 of %d on %s (pid %d): per-worker batch %d, global batch %d, %d steps/epoch; "
            "AdamW lr %g, warm-up %.2g epochs then cosine; seed %d for weights, seed+rank for "
            "dropout, (seed, epoch, rank) for shuffling, (seed, epoch, key) for augmentation; "
            "amp %s; torch threads %d",
            setup.world_size,
            setup.device,
            os.getpid(),
            cfg.batch_size,
            setup.global_batch_size,
            setup.steps_per_epoch,
            cfg.lr,
            cfg.warmup_epochs,
            cfg.seed,
            setup.amp_dtype or "off (fp32)",
            torch.get_num_threads(),
        )

    max_bad_pairs = int(config.get("max_bad_pairs", 0))
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        scheduler.start_epoch(epoch - 1)
        if freeze.start_epoch(epoch) and setup.rank == 0:
            log.info("epoch %d: encoder %s", epoch, "frozen" if freeze.frozen else "learning")
        metrics = train_epoch(
            model, optimizer, scheduler, loss_fn, setup, epoch=epoch, images=images
        )
        metrics.update(
            validate(model, loss_fn, setup, batch_size=int(config.get("eval_batch_size", 4)))
        )
        # Pairs left out so far (train and validation), counted where Ray Data decodes them;
        # read once every rank has drained its shards, and the same number on every rank.
        metrics["bad_pairs"] = count_over_ranks(setup.device)
        too_many = metrics["bad_pairs"] > max_bad_pairs
        metrics["world_size"] = setup.world_size
        metrics["epoch"] = epoch
        if setup.rank == 0:
            logger.log_epoch(epoch, metrics)  # before the report: an epoch is never left unlogged
            log.info(
                "epoch %d/%d  train_loss %.4f  val_loss %.4f  val_miou %.4f  pixel_acc %.4f  "
                "%.1f images/s (%d workers)  bad_pairs %d",
                epoch,
                cfg.epochs,
                metrics["train_loss"],
                metrics["val_loss"],
                _finite(metrics["val_miou"]),
                _finite(metrics["val_pixel_accuracy"]),
                metrics["images_per_second"],
                setup.world_size,
                metrics["bad_pairs"],
            )
            if too_many:
                log.error(
                    "stopping after epoch %d: %d pairs failed to read or decode, more than the "
                    "%d that --max-failed-fraction allows (the job fails naming them)",
                    epoch,
                    metrics["bad_pairs"],
                    max_bad_pairs,
                )
        report = {k: _finite(v) for k, v in metrics.items() if "/" not in k}
        if setup.rank == 0:
            with tempfile.TemporaryDirectory() as folder:
                save_train_checkpoint(
                    Path(folder),
                    model,
                    optimizer,
                    scheduler,
                    model_config=setup.model_config,
                    class_map=setup.class_map,
                    preprocess=setup.preprocess,
                    epoch=epoch,
                    metrics=metrics,
                    config=config,
                    world_size=setup.world_size,
                )
                ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(folder))
        else:
            ray.train.report(report, checkpoint=None)
        if too_many:  # every rank alike; the driver raises (a retry would fail the same way)
            break
    return {"start_epoch": start_epoch, "epochs": cfg.epochs, "world_size": setup.world_size}
