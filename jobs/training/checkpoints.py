"""Training checkpoints: what rank 0 writes each epoch, what a restarted worker group reads
back, and which one the end of the run registers.

Layout (one folder per epoch, handed to `ray.train.report`):
  unet.pt         unet_core checkpoint of the unwrapped model (weights, architecture, class
                  map, preprocessing; extra: epoch, val_miou): registered as is at the end
  train_state.pt  optimizer, scheduler (its progress in epochs, valid at any world size),
                  epoch, the world size that wrote it and the training config (bf16 autocast
                  needs no loss scaler, so there is none to save)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray.train
import torch
from torch import nn

from unet_core.checkpoint import load_checkpoint, save_checkpoint
from unet_core.classes import ClassMap
from unet_core.config import ModelConfig, PreprocessConfig

MODEL_FILE = "unet.pt"
STATE_FILE = "train_state.pt"


def save_train_checkpoint(
    folder: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    model_config: ModelConfig,
    class_map: ClassMap,
    preprocess: PreprocessConfig,
    epoch: int,
    metrics: dict[str, float],
    config: dict[str, Any],
    world_size: int | None = None,
) -> None:
    save_checkpoint(
        folder / MODEL_FILE,
        getattr(model, "module", model),  # never the DDP wrapper
        model_config=model_config,
        class_map=class_map,
        preprocess=preprocess,
        extra={
            "epoch": epoch,
            "val_miou": metrics.get("val_miou"),
            "run_name": config.get("run_name"),
        },
    )
    torch.save(
        {
            "epoch": epoch,
            "world_size": world_size,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "config": {k: v for k, v in config.items() if k in ("train", "model", "preprocess")},
        },
        folder / STATE_FILE,
    )


def restore(checkpoint: ray.train.Checkpoint, model: nn.Module) -> dict[str, Any]:
    """Load the weights into `model`; return the training state for the optimizer/scheduler."""
    with checkpoint.as_directory() as folder:
        loaded = load_checkpoint(Path(folder) / MODEL_FILE)
        model.load_state_dict(loaded.model.state_dict())
        return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)


def best_checkpoint(result: Any) -> tuple[ray.train.Checkpoint, dict[str, Any]]:
    """(checkpoint, metrics) of Ray Train's Result with the best val_miou; the later epoch on
    ties."""
    if not result.best_checkpoints:
        raise RuntimeError(f"the run reported no checkpoint (storage {result.path})")
    return max(
        result.best_checkpoints, key=lambda cm: (cm[1].get("val_miou", 0.0), cm[1].get("epoch", 0))
    )
