"""The learning-rate schedule as a function of training progress, measured in epochs.

Progress is the epochs completed plus the fraction of the current epoch done. The step that
starts at progress ``p`` uses ``lr * lr_factor(p)``: a linear warm-up from 1% of the peak over
``warmup_epochs``, then a cosine decay to 1% of the peak at ``epochs``. A curve in epochs, not in
optimizer steps: with a fixed per-worker batch the steps per epoch depend on the number of
data-parallel workers, and a run resumed with another worker count (an elastic resize, a rerun
with another ``--num-workers``) continues the same curve from the point where it stopped.
"""

from __future__ import annotations

import math
from typing import Any

import torch

FLOOR = 0.01
"""Share of the peak learning rate at the start of warm-up and at the end of training."""


def lr_factor(progress: float, *, epochs: int, warmup_epochs: float) -> float:
    """Multiplier of the peak learning rate ``progress`` epochs into training."""
    warmup = min(max(0.0, warmup_epochs), float(epochs))
    if progress < warmup:
        return FLOOR + (1.0 - FLOOR) * progress / warmup
    span = epochs - warmup
    done = 1.0 if span <= 0 else min(1.0, (progress - warmup) / span)
    return FLOOR + (1.0 - FLOOR) * 0.5 * (1.0 + math.cos(math.pi * done))


def steps_per_epoch(rows: int, *, world_size: int, batch_size: int) -> int:
    """Optimizer steps per epoch on each of ``world_size`` workers when ``rows`` are split in
    equal shards (the remainder dropped) and cut in batches of ``batch_size`` (the last one
    partial)."""
    return max(1, math.ceil((rows // max(1, world_size)) / batch_size))


class ProgressLR(torch.optim.lr_scheduler.LRScheduler):
    """Sets the learning rate from the training progress; each ``step()`` is
    ``1 / steps_per_epoch`` of an epoch, and ``start_epoch`` puts progress on the epoch
    boundary (a shard with fewer batches than planned does not shift the rest of the curve).

    Its state is the progress in epochs: loaded into a scheduler with another
    ``steps_per_epoch`` it continues at the same point of the curve.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        epochs: int,
        warmup_epochs: float,
        steps_per_epoch: int,
    ) -> None:
        self.epochs = epochs
        self.warmup_epochs = warmup_epochs
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.progress = 0.0
        """Epochs of training done (fractional within an epoch)."""
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        factor = lr_factor(self.progress, epochs=self.epochs, warmup_epochs=self.warmup_epochs)
        return [base * factor for base in self.base_lrs]

    def step(self, epoch: int | None = None) -> None:
        """Count one optimizer step; call it after ``optimizer.step()``."""
        if epoch is not None:
            raise TypeError("ProgressLR.step() takes no epoch; use start_epoch(epochs_done)")
        if not self._is_initial:  # the base class steps once on construction
            self.progress += 1.0 / self.steps_per_epoch
        super().step()

    def start_epoch(self, epochs_done: int) -> None:
        """Put progress at the start of the epoch after ``epochs_done`` completed ones."""
        self.progress = float(epochs_done)
        self._apply_lr()

    def state_dict(self) -> dict[str, Any]:
        return {
            "progress": self.progress,
            "last_epoch": self.last_epoch,  # steps taken (the base class's name)
            "_step_count": self._step_count,
            "steps_per_epoch": self.steps_per_epoch,  # the saver's: a record, never loaded
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue from the saved progress at this scheduler's own steps per epoch. A state
        without progress (a step-counting LambdaLR of older checkpoints) is read as its step
        count over this scheduler's steps per epoch: right at the same worker count, and
        ``start_epoch`` aligns it with the epoch the checkpoint ended."""
        steps = int(state_dict.get("last_epoch", 0))
        if "progress" in state_dict:
            self.progress = float(state_dict["progress"])
        else:
            self.progress = steps / self.steps_per_epoch
        self.last_epoch = steps
        self._step_count = int(state_dict.get("_step_count", steps + 1))
        self._apply_lr()

    def _apply_lr(self) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
