"""The loop Ray Train runs on every worker (rank): DDP training, exact validation, checkpoints.

Each epoch: train on this rank's shard; validate this rank's part of the validation set;
all-reduce the confusion matrix and the loss sums, so every rank holds metrics over the whole
set; rank 0 logs the epoch to MLflow and writes the checkpoint; every rank reports (the same
number of times). A restarted worker group resumes from `ray.train.get_checkpoint()`.

Checkpoint layout (one folder per epoch, written by rank 0):
  unet.pt         unet_core checkpoint of the unwrapped model (weights, architecture, class
                  map, preprocessing; extra: epoch, val_miou): registered as is at the end
  train_state.pt  optimizer, scheduler, epoch, config (bf16 autocast needs no loss scaler,
                  so `scaler` is stored as None)
"""

from __future__ import annotations

import logging
import math
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
import torch.distributed as dist
from torch import nn

from jobs.datasets import TRAIN, VAL, eval_batches, train_batches
from jobs.tracking import EpochLogger
from unet_core.checkpoint import load_checkpoint, save_checkpoint
from unet_core.classes import ClassMap
from unet_core.config import ModelConfig, PreprocessConfig, TrainConfig
from unet_core.engine import (
    EvalStats,
    amp_dtype_for,
    evaluate,
    make_optimizer,
    make_scheduler,
    train_one_epoch,
)
from unet_core.losses import SegmentationLoss
from unet_core.metrics import ConfusionMatrix
from unet_core.model import UNet
from unet_core.transforms import eval_transforms, train_transforms

log = logging.getLogger("unet_ray.worker")

MODEL_FILE = "unet.pt"
STATE_FILE = "train_state.pt"
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
    device: torch.device

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> WorkerSetup:
        context = ray.train.get_context()
        return cls(
            cfg=TrainConfig.from_dict(config["train"]),
            model_config=ModelConfig.from_dict(config["model"]),
            preprocess=PreprocessConfig.from_dict(config["preprocess"]),
            class_map=ClassMap.from_dict(config["class_map"]),
            rank=context.get_world_rank(),
            world_size=context.get_world_size(),
            device=ray.train.torch.get_device(),
        )


# --- collectives (no-ops in a single process) ------------------------------------------


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce(values: torch.Tensor, op: str = "sum") -> torch.Tensor:
    if _distributed():
        dist.all_reduce(values, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return values


def sync_buffers(model: nn.Module) -> None:
    """Rank 0's BatchNorm running statistics on every rank (DDP leaves each rank its own after
    the last step), so that every rank validates the model that rank 0 checkpoints."""
    if _distributed():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def reduce_eval(stats: EvalStats, device: torch.device) -> EvalStats:
    """Sum the confusion matrix and the loss over all ranks: metrics of the whole set."""
    matrix = all_reduce(torch.as_tensor(stats.confusion.matrix, device=device).clone())
    sums = all_reduce(
        torch.tensor([stats.loss_sum, float(stats.images)], dtype=torch.float64, device=device)
    )
    return EvalStats(
        loss_sum=float(sums[0]),
        images=int(sums[1]),
        confusion=ConfusionMatrix.from_array(matrix.cpu(), stats.confusion.ignore_index),
    )


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


def build_model(setup: WorkerSetup) -> nn.Module:
    """The same initial weights on every rank (seeded), then a per-rank seed for dropout."""
    torch.manual_seed(setup.cfg.seed)
    model = UNet.from_config(setup.model_config).to(memory_format=torch.channels_last)
    torch.manual_seed(setup.cfg.seed + setup.rank)
    return model


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loss_fn: nn.Module,
    setup: WorkerSetup,
    *,
    epoch: int,
) -> dict[str, float]:
    """One epoch on this rank's shard; loss and throughput over all ranks."""
    cfg = setup.cfg
    crop = cfg.crop_size or None
    transform = (
        train_transforms(crop, flips=cfg.augment, rotate90=cfg.augment, jitter=cfg.augment)
        if crop or cfg.augment
        else eval_transforms(None)
    )
    batches = train_batches(
        ray.train.get_dataset_shard(TRAIN),
        batch_size=cfg.batch_size,
        transform=transform,
        preprocess=setup.preprocess,
        seed=cfg.seed,
        epoch=epoch,
        rank=setup.rank,
    )
    waits = DataWait(batches)
    stats = train_one_epoch(
        model,
        waits,
        optimizer,
        loss_fn,
        device=setup.device,
        scheduler=scheduler,
        amp_dtype=amp_dtype_for(setup.device),
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
        amp_dtype=amp_dtype_for(setup.device),
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
        metrics[f"val_iou/{name}"] = row["iou"]
        metrics[f"val_dice/{name}"] = row["dice"]
    return metrics


def save_train_checkpoint(
    folder: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    setup: WorkerSetup,
    *,
    epoch: int,
    metrics: dict[str, float],
    config: dict[str, Any],
) -> None:
    save_checkpoint(
        folder / MODEL_FILE,
        getattr(model, "module", model),  # never the DDP wrapper
        model_config=setup.model_config,
        class_map=setup.class_map,
        preprocess=setup.preprocess,
        extra={
            "epoch": epoch,
            "val_miou": metrics.get("val_miou"),
            "run_name": config.get("run_name"),
        },
    )
    torch.save(
        {
            "epoch": epoch,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": None,
            "config": {k: v for k, v in config.items() if k in ("train", "model", "preprocess")},
        },
        folder / STATE_FILE,
    )


def restore(
    checkpoint: ray.train.Checkpoint,
    model: nn.Module,
) -> dict[str, Any]:
    """Load the weights into `model`; return the training state for the optimizer/scheduler."""
    with checkpoint.as_directory() as folder:
        loaded = load_checkpoint(Path(folder) / MODEL_FILE)
        model.load_state_dict(loaded.model.state_dict())
        return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)


def quiet_worker_logs(level: str) -> None:
    """Our loggers at `level`; everything else at WARNING unless DEBUG. Ray Train configures
    the worker's root logger at INFO, and some of its per-report messages bypass its own
    LoggingConfig filter (their logger is named after a file path)."""
    logging.getLogger().setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
    for name in ("unet_ray", "jobs", "unet_core"):
        logging.getLogger(name).setLevel(level)


def _clean(value: float) -> float:
    return 0.0 if value is None or not math.isfinite(value) else float(value)


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train entry point; `config` is built on the driver by `make_loop_config`."""
    quiet_worker_logs(config.get("log_level", "INFO"))
    if config.get("torch_threads"):
        torch.set_num_threads(int(config["torch_threads"]))
    setup = WorkerSetup.from_config(config)
    cfg = setup.cfg
    model = build_model(setup)

    state = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        state = restore(checkpoint, model)
    model = ray.train.torch.prepare_model(model)  # to the device; DDP when world_size > 1
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch=int(config["steps_per_epoch"]))
    start_epoch = 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch = int(state["epoch"])
    loss_fn = SegmentationLoss(
        setup.model_config.num_classes, ce_weight=cfg.ce_weight, dice_weight=cfg.dice_weight
    )
    logger = EpochLogger(config.get("tracking_uri"), config.get("run_id"), setup.rank)
    if setup.rank == 0:
        if start_epoch:
            log.info("resuming from the checkpoint of epoch %d", start_epoch)
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
            cfg.batch_size * setup.world_size,
            config["steps_per_epoch"],
            cfg.lr,
            cfg.warmup_epochs,
            cfg.seed,
            amp_dtype_for(setup.device),
            torch.get_num_threads(),
        )

    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        metrics = train_epoch(model, optimizer, scheduler, loss_fn, setup, epoch=epoch)
        metrics.update(
            validate(model, loss_fn, setup, batch_size=int(config.get("eval_batch_size", 4)))
        )
        metrics["epoch"] = epoch
        if setup.rank == 0:
            logger.log_epoch(epoch, metrics)  # before the report: an epoch is never left unlogged
            log.info(
                "epoch %d/%d  train_loss %.4f  val_loss %.4f  val_miou %.4f  pixel_acc %.4f  "
                "%.1f images/s (%d workers)",
                epoch,
                cfg.epochs,
                metrics["train_loss"],
                metrics["val_loss"],
                _clean(metrics["val_miou"]),
                _clean(metrics["val_pixel_accuracy"]),
                metrics["images_per_second"],
                setup.world_size,
            )
        report = {k: _clean(v) for k, v in metrics.items() if "/" not in k}
        if setup.rank == 0:
            with tempfile.TemporaryDirectory() as folder:
                save_train_checkpoint(
                    Path(folder),
                    model,
                    optimizer,
                    scheduler,
                    setup,
                    epoch=epoch,
                    metrics=metrics,
                    config=config,
                )
                ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(folder))
        else:
            ray.train.report(report, checkpoint=None)
    return {"start_epoch": start_epoch, "epochs": cfg.epochs}


def make_loop_config(cfg, plan, *, tracking_uri: str, run_id: str) -> dict[str, Any]:
    """train_loop_config from the job config (jobs.train_config.TrainJobConfig) and the data
    plan (jobs.validation.DataPlan): plain data, the same for every rank."""
    from dataclasses import replace

    model_config = replace(
        cfg.model, in_channels=plan.in_channels, num_classes=plan.class_map.num_classes
    )
    world = cfg.num_workers
    rows_per_worker = len(plan.train) // world  # equal shards drop the remainder
    return {
        "train": cfg.train.to_dict(),
        "model": model_config.to_dict(),
        "preprocess": PreprocessConfig.for_channels(plan.in_channels).to_dict(),
        "class_map": plan.class_map.to_dict(),
        "steps_per_epoch": max(1, math.ceil(rows_per_worker / cfg.train.batch_size)),
        "eval_batch_size": max(1, min(cfg.train.batch_size, 8)),
        "num_workers": world,
        "global_batch_size": cfg.train.batch_size * world,
        "torch_threads": cfg.torch_threads,
        "log_level": cfg.log_level,
        "run_name": cfg.run_name,
        "tracking_uri": tracking_uri,
        "run_id": run_id,
    }
