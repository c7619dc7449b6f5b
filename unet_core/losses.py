"""Cross-entropy plus soft Dice for multi-class segmentation, both blind to ignored pixels.

Ignored pixels (``target == ignore_index``) add nothing to the cross-entropy nor to the Dice
intersections and cardinalities, so their logits receive an exact zero gradient. A batch whose
pixels are all ignored gives a loss of 0 that is still part of the autograd graph (never NaN).
Neither loss synchronises with the device (no ``.item()`` or data-dependent Python branches).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unet_core.config import IGNORE_INDEX


def _check_shapes(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.dim() != 4 or target.dim() != 3:
        raise ValueError(
            f"expected logits (B, K, H, W) and target (B, H, W), got {tuple(logits.shape)} and "
            f"{tuple(target.shape)}"
        )
    if logits.shape[0] != target.shape[0] or logits.shape[2:] != target.shape[1:]:
        raise ValueError(
            f"logits {tuple(logits.shape)} and target {tuple(target.shape)} disagree on batch or "
            "spatial size; crop or resize them to the same H x W"
        )
    if target.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")


def soft_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    smooth: float = 1.0,
) -> torch.Tensor:
    """Soft multi-class Dice loss: 1 - Dice, averaged over the classes present in ``target``.

    ``logits`` (B, K, H, W) go through a softmax; ``target`` (B, H, W) holds class indices or
    ``ignore_index``. Sums run over the whole batch (batch Dice), in float32 with autocast off.
    Per class k: ``dice_k = (2 * sum(p_k * y_k) + smooth) / (sum(p_k) + sum(y_k) + smooth)``.
    Classes absent from the (non-ignored) target are left out of the mean: false positives for
    them are still paid for through the lower probability of the true class. Returns a scalar.
    """
    _check_shapes(logits, target)
    target = target.long()
    num_classes = logits.shape[1]
    with torch.autocast(logits.device.type, enabled=False):
        valid = target != ignore_index  # (B, H, W)
        probs = logits.float().softmax(dim=1) * valid.unsqueeze(1)  # (B, K, H, W), 0 at ignored
        classes = torch.arange(num_classes, device=logits.device).view(1, -1, 1, 1)
        # Ignored pixels get index -1 so they match no class.
        one_hot = torch.where(valid, target, -1).unsqueeze(1) == classes  # (B, K, H, W) bool
        dims = (0, 2, 3)
        intersection = (probs * one_hot).sum(dims)  # (K,)
        target_count = one_hot.sum(dims).float()  # (K,)
        cardinality = probs.sum(dims) + target_count  # (K,)
        dice = (2.0 * intersection + smooth) / (cardinality + smooth)
        present = (target_count > 0).float()
        # Mean over present classes; with none present (all ignored) this is 0 * graph / 1.
        return ((1.0 - dice) * present).sum() / present.sum().clamp_min(1.0)


def class_pixel_counts(mask: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(pixels, image_pixels)`` of one mask of class indices, both (K,) int64: the pixels of
    each class, and the mask's labelled pixels for each class it holds (0 for the others).
    Ignored pixels count in neither. Sum them over masks for `median_frequency_weights`."""
    labelled = mask[mask != IGNORE_INDEX].ravel()
    pixels = np.bincount(labelled, minlength=num_classes)[:num_classes].astype(np.int64)
    return pixels, np.where(pixels > 0, labelled.size, 0).astype(np.int64)


def median_frequency_weights(
    counts: Iterable[tuple[np.ndarray, np.ndarray]], power: float = 1.0
) -> list[float]:
    """Cross-entropy class weights by median-frequency balancing (Eigen & Fergus 2015, SegNet's
    CamVid recipe) from `class_pixel_counts` of masks: ``freq_c`` = pixels of class c / pixels
    of the masks that hold c, ``w_c = (median of freq / freq_c) ** power`` (power 1 as in the
    papers, 0.5 a softer balance, 0 all ones). A class no mask holds weighs 1."""
    if power < 0:
        raise ValueError(f"power must be >= 0 (0 = no balancing), got {power}")
    counts = list(counts)
    if not counts:
        raise ValueError("median_frequency_weights needs the class_pixel_counts of >= 1 mask")
    pixels = np.sum([c[0] for c in counts], axis=0).astype(np.float64)
    image_pixels = np.sum([c[1] for c in counts], axis=0).astype(np.float64)
    seen = pixels > 0
    weights = np.ones_like(pixels)
    if seen.any():
        freq = pixels[seen] / image_pixels[seen]
        weights[seen] = (np.median(freq) / freq) ** power
    return [float(w) for w in weights]


def _cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    ignore_index: int,
    class_weights: torch.Tensor | None,
    pixel_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted mean cross-entropy over non-ignored pixels; 0 (with a graph) when there are none.

    Same value as ``F.cross_entropy(..., weight, ignore_index)`` but no NaN for an all-ignored
    batch and no host synchronisation to detect one. ``pixel_weights`` (B, H, W) multiply the
    class weights pixel by pixel, in the same weighted mean.
    """
    valid = target != ignore_index  # (B, H, W)
    safe_target = torch.where(valid, target, 0)
    per_pixel = F.cross_entropy(logits, safe_target, reduction="none")  # (B, H, W)
    weight = valid.float()
    if class_weights is not None:
        weight = weight * class_weights.to(logits.device)[safe_target]
    if pixel_weights is not None:
        weight = weight * pixel_weights.to(device=logits.device, dtype=torch.float32)
    # Multiplying (not indexing) keeps the zero gradient exact at ignored pixels.
    return (per_pixel * weight).sum() / weight.sum().clamp_min(1e-12)


class SegmentationLoss(nn.Module):
    """``ce_weight * cross-entropy + dice_weight * soft Dice``; ignored pixels count in neither.

    ``class_weights`` (K,) weight the cross-entropy only (weighted mean, as in
    ``torch.nn.CrossEntropyLoss``). So does the optional per-pixel ``weight`` (B, H, W) of
    ``forward`` and ``components`` (e.g. `unet_core.weightmap.border_weight_map`): the
    cross-entropy is then ``sum(w * ce) / sum(w)`` over non-ignored pixels, normalised by the
    weight sum so that its scale (and the balance with Dice) does not depend on w0; weights of 1
    give the unweighted loss exactly. Dice takes no pixel weights. Both terms are computed in
    float32 whatever the autocast dtype of the logits. ``forward`` returns the scalar loss;
    ``components`` returns the two terms (unweighted) and the total, e.g. for logging.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        ignore_index: int = IGNORE_INDEX,
        class_weights: Sequence[float] | torch.Tensor | None = None,
        smooth: float = 1.0,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(
                f"num_classes must be >= 2 (a binary task uses 2 classes), got {num_classes}"
            )
        if ce_weight < 0 or dice_weight < 0 or ce_weight + dice_weight == 0:
            raise ValueError(
                f"ce_weight and dice_weight must be >= 0 and not both 0, got {ce_weight} and "
                f"{dice_weight}"
            )
        if smooth < 0:
            raise ValueError(f"smooth must be >= 0, got {smooth}")
        weights = None
        if class_weights is not None:
            weights = torch.as_tensor(class_weights, dtype=torch.float32).flatten()
            if weights.numel() != num_classes or bool((weights < 0).any()):
                raise ValueError(
                    f"class_weights needs {num_classes} non-negative values (one per class), "
                    f"got {weights.tolist()}"
                )
        self.num_classes = num_classes
        self.ce_weight = float(ce_weight)
        self.dice_weight = float(dice_weight)
        self.ignore_index = ignore_index
        self.smooth = float(smooth)
        self.class_weights: torch.Tensor | None
        self.register_buffer("class_weights", weights)

    def components(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"ce", "dice", "loss"}`` scalars; ``loss`` is the weighted sum ``forward`` returns.
        ``weight``: optional (B, H, W) non-negative per-pixel weights of the cross-entropy."""
        _check_shapes(logits, target)
        if weight is not None and tuple(weight.shape) != tuple(target.shape):
            raise ValueError(
                f"pixel weights {tuple(weight.shape)} must have the target's shape "
                f"{tuple(target.shape)} (B, H, W): one weight per pixel"
            )
        if logits.shape[1] != self.num_classes:
            raise ValueError(
                f"logits have {logits.shape[1]} classes, the loss was built for "
                f"{self.num_classes}; match SegmentationLoss(num_classes) to the model"
            )
        target = target.long()
        with torch.autocast(logits.device.type, enabled=False):
            logits32 = logits.float()
            ce = _cross_entropy(
                logits32,
                target,
                ignore_index=self.ignore_index,
                class_weights=self.class_weights,
                pixel_weights=weight,
            )
            dice = soft_dice_loss(
                logits32, target, ignore_index=self.ignore_index, smooth=self.smooth
            )
        return {"ce": ce, "dice": dice, "loss": self.ce_weight * ce + self.dice_weight * dice}

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.components(logits, target, weight)["loss"]

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, ce_weight={self.ce_weight}, "
            f"dice_weight={self.dice_weight}, ignore_index={self.ignore_index}, "
            f"smooth={self.smooth}"
        )
