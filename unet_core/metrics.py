"""Confusion-matrix metrics (IoU, Dice, pixel accuracy) that can be summed across workers.

Absent-class policy: a class absent from both the truth and the prediction (over everything
accumulated so far) has IoU and Dice NaN and is left out of ``mean_iou``/``mean_dice`` (a class
nobody labelled nor predicted says nothing about the model). A class present in only one of
the two scores 0. When no class has any pixel, the means are NaN. ``summary`` turns every NaN
into None so it can go straight to JSON.

`adapted_rand_error` scores segments rather than pixels: the ISBI 2012 leaderboard metric, on
label images that `segment_labels` makes from class masks.

Counts are int64 and exact, so matrices from several workers or batches add up to the matrix of
the concatenated data: ``a + b``, ``a.merge(b)``, or ``all_reduce(cm.to_tensor())`` then
``ConfusionMatrix.from_tensor``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from unet_core.config import IGNORE_INDEX
from unet_core.messages import shorten_values
from unet_core.weightmap import label_components

ArrayLike = np.ndarray | torch.Tensor


class ConfusionMatrix:
    """(K, K) int64 pixel counts, rows = truth, columns = prediction; ignored pixels skipped.

    ``update`` takes NumPy arrays or torch tensors of class indices of any (equal) shape. For
    tensors the counting runs on their device with ``torch.bincount`` and only K * K + 2
    numbers come back to the host, so evaluating GPU batches costs one small copy per update.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 2:
            raise ValueError(
                f"num_classes must be >= 2 (a binary task uses 2 classes), got {num_classes}"
            )
        if 0 <= ignore_index < num_classes:
            raise ValueError(
                f"ignore_index {ignore_index} is a class index (num_classes={num_classes}); "
                f"use a value outside [0, {num_classes}), e.g. {IGNORE_INDEX}"
            )
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    # ---- accumulation ------------------------------------------------------------------------

    def update(self, pred: ArrayLike, target: ArrayLike) -> None:
        """Count ``pred`` against ``target`` (class indices, same shape, any layout).

        Pixels whose target is ``ignore_index`` are skipped. Raises ValueError, naming the
        values, for predictions outside [0, K) or targets that are neither a class nor ignored.
        """
        if not isinstance(pred, torch.Tensor):
            pred = np.asarray(pred)
        if not isinstance(target, torch.Tensor):
            target = np.asarray(target)
        pred_shape, target_shape = tuple(pred.shape), tuple(target.shape)
        if pred_shape != target_shape:
            raise ValueError(
                f"prediction shape {pred_shape} != target shape {target_shape}; pass class "
                "indices (e.g. logits.argmax(dim=1)), not logits or one-hot masks"
            )
        for name, x in (("prediction", pred), ("target", target)):
            floating = x.is_floating_point() if isinstance(x, torch.Tensor) else x.dtype.kind == "f"
            if floating:
                raise TypeError(
                    f"{name} must hold integer class indices, got dtype {x.dtype}; "
                    "take logits.argmax(dim=1) first"
                )
        if isinstance(pred, torch.Tensor) or isinstance(target, torch.Tensor):
            counts = self._count_torch(pred, target)
        else:
            counts = self._count_numpy(pred, target)
        k = self.num_classes
        if counts[k * k + 1]:
            self._raise_out_of_range(pred, target)
        self.matrix += counts[: k * k].reshape(k, k)

    def _count_numpy(self, pred: np.ndarray, target: np.ndarray) -> np.ndarray:
        k = self.num_classes
        p = pred.reshape(-1).astype(np.int64)
        t = target.reshape(-1).astype(np.int64)
        ok = (p >= 0) & (p < k) & (t >= 0) & (t < k)
        # Bin k*k collects ignored pixels, bin k*k + 1 invalid ones: one pass, no boolean indexing.
        bins = np.where(t == self.ignore_index, k * k, np.where(ok, t * k + p, k * k + 1))
        return np.bincount(bins, minlength=k * k + 2)

    def _count_torch(self, pred: ArrayLike, target: ArrayLike) -> np.ndarray:
        k = self.num_classes
        device = pred.device if isinstance(pred, torch.Tensor) else target.device
        p = torch.as_tensor(pred, device=device).reshape(-1).long()
        t = torch.as_tensor(target, device=device).reshape(-1).long()
        ok = (p >= 0) & (p < k) & (t >= 0) & (t < k)
        bins = torch.where(
            t == self.ignore_index, k * k, torch.where(ok, t * k + p, k * k + 1)
        )  # (N,) on the device
        return torch.bincount(bins, minlength=k * k + 2).cpu().numpy()  # the only host copy

    def _raise_out_of_range(self, pred: ArrayLike, target: ArrayLike) -> None:
        k = self.num_classes
        p = (pred.cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)).ravel()
        t = target.cpu().numpy() if isinstance(target, torch.Tensor) else np.asarray(target)
        t = t.ravel()
        keep = t != self.ignore_index
        bad_pred = p[keep & ((p < 0) | (p >= k))]
        if bad_pred.size:
            raise ValueError(
                f"predictions must be class indices in [0, {k}), got {shorten_values(np.unique(bad_pred))}; "
                f"check that the model has {k} output classes"
            )
        bad_target = t[keep & ((t < 0) | (t >= k))]
        raise ValueError(
            f"targets must be class indices in [0, {k}) or the ignore index "
            f"{self.ignore_index}, got {shorten_values(np.unique(bad_target))}; decode masks with the class map"
        )

    def reset(self) -> None:
        self.matrix[:] = 0

    def copy(self) -> ConfusionMatrix:
        return self.from_array(self.matrix, ignore_index=self.ignore_index)

    def _check_compatible(self, other: ConfusionMatrix) -> None:
        if not isinstance(other, ConfusionMatrix):
            raise TypeError(f"can only combine with a ConfusionMatrix, got {type(other).__name__}")
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ValueError(
                f"cannot combine confusion matrices of {self.num_classes} and "
                f"{other.num_classes} classes (ignore index {self.ignore_index} and "
                f"{other.ignore_index})"
            )

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add ``other``'s counts into this matrix (in place); returns self."""
        self._check_compatible(other)
        self.matrix += other.matrix
        return self

    def __add__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        return self.copy().merge(other)

    def __radd__(self, other: Any) -> ConfusionMatrix:
        if isinstance(other, int) and other == 0:  # lets sum([cm1, cm2, ...]) work
            return self.copy()
        return NotImplemented

    def to_tensor(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(K, K) int64 tensor (a copy), e.g. for ``torch.distributed.all_reduce``."""
        return torch.from_numpy(self.matrix.copy()).to(device or "cpu")

    @classmethod
    def from_array(cls, array: ArrayLike, ignore_index: int = IGNORE_INDEX) -> ConfusionMatrix:
        """Rebuild from (K, K) counts (NumPy array or tensor on any device)."""
        if isinstance(array, torch.Tensor):
            array = array.detach().cpu().numpy()
        arr = np.asarray(array)
        if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
            raise ValueError(f"expected a square (K, K) count matrix, got shape {arr.shape}")
        if arr.dtype.kind not in "iu" or (arr < 0).any():
            raise ValueError(f"counts must be non-negative integers, got dtype {arr.dtype}")
        out = cls(arr.shape[0], ignore_index)
        out.matrix = arr.astype(np.int64, copy=True)
        return out

    from_tensor = from_array

    # ---- scores ------------------------------------------------------------------------------

    def _tp(self) -> np.ndarray:
        return np.diag(self.matrix).astype(np.float64)

    def support(self) -> np.ndarray:
        """(K,) int64 pixels of each class in the truth."""
        return self.matrix.sum(axis=1)

    def iou(self) -> np.ndarray:
        """(K,) float64 TP / (TP + FP + FN); NaN for a class absent from truth and prediction."""
        tp = self._tp()
        union = self.matrix.sum(0) + self.matrix.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / union, np.nan)

    def dice(self) -> np.ndarray:
        """(K,) float64 2TP / (2TP + FP + FN); NaN for a class absent from truth and prediction."""
        tp = self._tp()
        denom = self.matrix.sum(0) + self.matrix.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, 2 * tp / denom, np.nan)

    @staticmethod
    def _nanmean(values: np.ndarray) -> float:
        return float("nan") if np.isnan(values).all() else float(np.nanmean(values))

    def mean_iou(self) -> float:
        """Mean IoU over classes present in truth or prediction; NaN when no pixel was counted."""
        return self._nanmean(self.iou())

    def mean_dice(self) -> float:
        """Mean Dice over classes present in truth or prediction; NaN when no pixel was counted."""
        return self._nanmean(self.dice())

    def pixel_accuracy(self) -> float:
        """Share of counted pixels predicted right; NaN when no pixel was counted."""
        total = self.matrix.sum()
        return float(self._tp().sum() / total) if total else float("nan")

    def pixel_error(self) -> float:
        """1 - pixel accuracy (the pixel error of the ISBI 2012 challenge); NaN when empty."""
        return 1.0 - self.pixel_accuracy()

    def summary(self, class_names: list[str] | tuple[str, ...] | None = None) -> dict[str, Any]:
        """JSON-ready scores; every NaN becomes None.

        ``{"mean_iou", "mean_dice", "pixel_accuracy", "pixel_error", "pixels",
        "per_class": {name: {"iou", "dice", "support"}}}``; names default to "0", "1", ...
        """
        names = (
            [str(i) for i in range(self.num_classes)] if class_names is None else list(class_names)
        )
        if len(names) != self.num_classes or len(set(names)) != len(names):
            raise ValueError(f"class_names needs {self.num_classes} distinct names, got {names!r}")
        iou, dice, support = self.iou(), self.dice(), self.support()
        return {
            "mean_iou": finite_or_none(self.mean_iou()),
            "mean_dice": finite_or_none(self.mean_dice()),
            "pixel_accuracy": finite_or_none(self.pixel_accuracy()),
            "pixel_error": finite_or_none(self.pixel_error()),
            "pixels": int(self.matrix.sum()),
            "per_class": {
                name: {
                    "iou": finite_or_none(iou[i]),
                    "dice": finite_or_none(dice[i]),
                    "support": int(support[i]),
                }
                for i, name in enumerate(names)
            },
        }

    def __repr__(self) -> str:
        return (
            f"ConfusionMatrix(num_classes={self.num_classes}, pixels={int(self.matrix.sum())}, "
            f"mean_iou={self.mean_iou():.4f})"
        )


def finite_or_none(x: float | None) -> float | None:
    """``x`` as a float, or None when it is None, NaN or infinite (JSON and MLflow take no NaN):
    e.g. the IoU of a class absent from both truth and prediction."""
    return None if x is None or not np.isfinite(x) else float(x)


def segment_labels(mask: np.ndarray, object_class: int, *, connectivity: int = 4) -> np.ndarray:
    """(H, W) int32 segments of a class mask: the connected components of ``object_class``
    (ISBI 2012: the cells) numbered 1.., and 0 everywhere else, ignored pixels included."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected an HxW mask of class indices, got shape {mask.shape}")
    return label_components(mask == object_class, connectivity=connectivity)[0]


def adapted_rand_error(
    truth_labels: np.ndarray, pred_labels: np.ndarray
) -> tuple[float, float, float]:
    """(error, precision, recall) of the foreground-restricted Rand index, as the ISBI 2012 and
    SNEMI3D leaderboards and ``skimage.metrics.adapted_rand_error`` compute it.

    Pixels whose truth label is 0 (background, boundaries, ignored) are left out; every other
    label, 0 included in the prediction, is a segment. With n_ij the pixels in truth segment i
    and predicted segment j, s_j and t_i the sizes of the segments and n the pixels kept:

    - precision = (sum n_ij^2 - n) / (sum s_j^2 - n): of the pixel pairs the prediction puts in
      one segment, the share the truth does too (merges lower it);
    - recall = (sum n_ij^2 - n) / (sum t_i^2 - n): of the pairs the truth puts together, the
      share the prediction does too (splits lower it);
    - error = 1 - 2 * precision * recall / (precision + recall).

    The error equals skimage's; its code returns precision and recall the other way round from
    its documentation (scikit-image issue 6485): these follow the documentation. NaN where a
    ratio is 0 / 0 (no truth pixel, or only one-pixel segments).
    """
    truth, pred = np.asarray(truth_labels), np.asarray(pred_labels)
    if truth.shape != pred.shape:
        raise ValueError(
            f"truth labels {truth.shape} and predicted labels {pred.shape} differ in shape"
        )
    for name, x in (("truth", truth), ("prediction", pred)):
        if x.dtype.kind not in "iub":
            raise TypeError(
                f"{name} must hold integer segment labels, got dtype {x.dtype}; make them "
                "with segment_labels(mask, object_class)"
            )
    keep = truth.ravel() != 0
    t, p = truth.ravel()[keep], pred.ravel()[keep]
    n = t.size
    _, ti = np.unique(t, return_inverse=True)
    pj_values, pj = np.unique(p, return_inverse=True)
    _, joint = np.unique(ti.astype(np.int64) * max(len(pj_values), 1) + pj, return_counts=True)

    def pairs(counts: np.ndarray) -> int:  # twice the pixel pairs within the same segment
        counts = counts.astype(np.int64)
        return int((counts * counts).sum()) - n

    both = pairs(joint)
    in_truth, in_pred = pairs(np.bincount(ti)), pairs(np.bincount(pj))
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = float(np.float64(both) / in_pred)
        recall = float(np.float64(both) / in_truth)
        error = 1.0 - float(np.float64(2 * both) / (in_pred + in_truth))
    return error, precision, recall
