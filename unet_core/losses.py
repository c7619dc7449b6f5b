"""Cross-entropy plus soft Dice, both blind to ignored pixels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unet_core.config import IGNORE_INDEX


def soft_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    smooth: float = 1.0,
) -> torch.Tensor:
    """1 - mean over classes of the soft Dice, computed in float32 over non-ignored pixels."""
    num_classes = logits.shape[1]
    probs = logits.float().softmax(dim=1)  # (B, K, H, W)
    valid = (target != ignore_index).unsqueeze(1)  # (B, 1, H, W)
    safe_target = torch.where(valid.squeeze(1), target, torch.zeros_like(target))
    one_hot = F.one_hot(safe_target, num_classes).permute(0, 3, 1, 2).float()  # (B, K, H, W)
    probs = probs * valid
    one_hot = one_hot * valid
    dims = (0, 2, 3)
    intersection = (probs * one_hot).sum(dims)
    cardinality = probs.sum(dims) + one_hot.sum(dims)
    dice = (2 * intersection + smooth) / (cardinality + smooth)  # (K,)
    return 1.0 - dice.mean()


class SegmentationLoss(nn.Module):
    """``ce_weight * CE + dice_weight * soft Dice``; ignored pixels count in neither term."""

    def __init__(
        self,
        num_classes: int,
        *,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        ignore_index: int = IGNORE_INDEX,
        class_weights: torch.Tensor | None = None,
        smooth: float = 1.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight
        self.ignore_index = ignore_index
        self.smooth = smooth
        self.register_buffer(
            "class_weights",
            None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32),
        )

    def components(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = logits.float()
        valid = target != self.ignore_index
        if valid.any():
            ce = F.cross_entropy(
                logits, target, weight=self.class_weights, ignore_index=self.ignore_index
            )
        else:  # all ignored: zero loss that still belongs to the graph
            ce = logits.sum() * 0.0
        dice = soft_dice_loss(logits, target, ignore_index=self.ignore_index, smooth=self.smooth)
        return {"ce": ce, "dice": dice}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        parts = self.components(logits, target)
        return self.ce_weight * parts["ce"] + self.dice_weight * parts["dice"]
