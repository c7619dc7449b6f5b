"""Confusion-matrix metrics that can be summed across workers.

Policy for classes absent from both truth and prediction: their IoU and Dice are NaN and they
are left out of the means (a class nobody predicted nor labelled says nothing about the model).
A class present in only one of the two scores 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from unet_core.config import IGNORE_INDEX


class ConfusionMatrix:
    """(K, K) int64 counts, rows = truth, columns = prediction; ignored pixels skipped."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> None:
        k = self.num_classes
        if isinstance(pred, torch.Tensor) or isinstance(target, torch.Tensor):
            pred_t = torch.as_tensor(pred).reshape(-1).long()
            target_t = torch.as_tensor(target, device=pred_t.device).reshape(-1).long()
            keep = target_t != self.ignore_index
            pred_t, target_t = pred_t[keep], target_t[keep]
            if pred_t.numel() and (pred_t.min() < 0 or pred_t.max() >= k):
                raise ValueError(f"predictions must be class indices in [0, {k})")
            if target_t.numel() and (target_t.min() < 0 or target_t.max() >= k):
                raise ValueError(
                    f"targets must be class indices in [0, {k}) or {self.ignore_index}"
                )
            counts = torch.bincount(target_t * k + pred_t, minlength=k * k)  # on the device
            self.matrix += counts.cpu().numpy().reshape(k, k)
            return
        pred_a = np.asarray(pred).reshape(-1).astype(np.int64)
        target_a = np.asarray(target).reshape(-1).astype(np.int64)
        keep = target_a != self.ignore_index
        pred_a, target_a = pred_a[keep], target_a[keep]
        if pred_a.size and (pred_a.min() < 0 or pred_a.max() >= k):
            raise ValueError(f"predictions must be class indices in [0, {k})")
        if target_a.size and (target_a.min() < 0 or target_a.max() >= k):
            raise ValueError(f"targets must be class indices in [0, {k}) or {self.ignore_index}")
        self.matrix += np.bincount(target_a * k + pred_a, minlength=k * k).reshape(k, k)

    def reset(self) -> None:
        self.matrix[:] = 0

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        if other.num_classes != self.num_classes:
            raise ValueError("cannot merge confusion matrices of different class counts")
        self.matrix += other.matrix
        return self

    def __add__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        out = ConfusionMatrix(self.num_classes, self.ignore_index)
        out.matrix = self.matrix + other.matrix
        return out

    def to_tensor(self) -> torch.Tensor:
        """int64 tensor for ``torch.distributed.all_reduce``."""
        return torch.from_numpy(self.matrix.copy())

    @classmethod
    def from_array(
        cls, array: np.ndarray | torch.Tensor, ignore_index: int = IGNORE_INDEX
    ) -> ConfusionMatrix:
        arr = np.asarray(array.cpu() if isinstance(array, torch.Tensor) else array, dtype=np.int64)
        out = cls(arr.shape[0], ignore_index)
        out.matrix = arr.copy()
        return out

    from_tensor = from_array

    @property
    def _tp(self) -> np.ndarray:
        return np.diag(self.matrix).astype(np.float64)

    def iou(self) -> np.ndarray:
        tp = self._tp
        union = self.matrix.sum(0) + self.matrix.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / union, np.nan)

    def dice(self) -> np.ndarray:
        tp = self._tp
        denom = self.matrix.sum(0) + self.matrix.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, 2 * tp / denom, np.nan)

    def mean_iou(self) -> float:
        """Mean over classes present in truth or prediction; NaN when there are no pixels."""
        iou = self.iou()
        return float(np.nanmean(iou)) if not np.isnan(iou).all() else float("nan")

    def mean_dice(self) -> float:
        dice = self.dice()
        return float(np.nanmean(dice)) if not np.isnan(dice).all() else float("nan")

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(self._tp.sum() / total) if total else float("nan")

    def pixel_error(self) -> float:
        """1 - pixel accuracy: the U-Net paper's ISBI 2012 metric."""
        return 1.0 - self.pixel_accuracy()

    def summary(self, class_names: list[str] | None = None) -> dict[str, Any]:
        """JSON-ready figures; NaN becomes None."""
        names = class_names or [str(i) for i in range(self.num_classes)]

        def clean(x: float) -> float | None:
            return None if np.isnan(x) else float(x)

        iou, dice, support = self.iou(), self.dice(), self.matrix.sum(1)
        return {
            "mean_iou": clean(self.mean_iou()),
            "mean_dice": clean(self.mean_dice()),
            "pixel_accuracy": clean(self.pixel_accuracy()),
            "pixel_error": clean(self.pixel_error()),
            "per_class": {
                name: {"iou": clean(iou[i]), "dice": clean(dice[i]), "support": int(support[i])}
                for i, name in enumerate(names)
            },
        }
