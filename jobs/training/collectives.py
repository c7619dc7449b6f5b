"""Collectives of the training workers: sums and maxima over all ranks, rank 0's buffers on
every rank. No-ops in a single process, so the same loop runs with one worker or many."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from unet_core.engine import EvalStats
from unet_core.metrics import ConfusionMatrix


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce(values: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In place over all ranks: ``op`` "sum" or "max"."""
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
