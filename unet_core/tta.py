"""Test-time augmentation: the mean softmax over flipped and rotated views of a batch.

Modes (``TTA_MODES``): "none" (the plain prediction), "hflip" (identity and the left-right
mirror: 2 passes; for scenes with an up and a down, such as street views, where an upside-down
view is one the model never learnt), "flip" (identity, left-right and up-down mirrors: 3 passes;
``tta=True``), "dihedral" (the 8 symmetries of the square: rotations by 0,
90, 180 and 270 degrees, each with and without a mirror: 8 passes). Each view's probabilities
are mapped back to the input's orientation before the mean: probabilities are averaged, not
logits, so TTA over an ensemble (`unet_core.ensemble`, whose output is the log of its members'
mean softmax) equals each member's TTA averaged. A view that turns by 90 degrees
swaps height and width; the model pads any size to its multiple of 2**depth itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["TTA_MODES", "View", "mean_softmax", "resolve_tta", "views"]

TTA_MODES = ("none", "hflip", "flip", "dihedral")


@dataclass(frozen=True)
class View:
    """One symmetry of the square: optionally swap height and width (a transpose), then mirror
    left-right (``hflip``) and/or up-down (``vflip``). All 8 combinations form the dihedral group;
    a rotation by 90 degrees is a transpose and one mirror."""

    transpose: bool = False
    hflip: bool = False
    vflip: bool = False

    def _dims(self) -> list[int]:
        return [d for d, on in ((-1, self.hflip), (-2, self.vflip)) if on]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """(..., H, W) -> the view: (..., H, W), or (..., W, H) when it transposes."""
        y = x.transpose(-2, -1) if self.transpose else x
        dims = self._dims()
        return y.flip(dims) if dims else y

    def invert(self, y: torch.Tensor) -> torch.Tensor:
        """A tensor in the view's orientation -> back in the input's (undoes `apply`)."""
        dims = self._dims()
        y = y.flip(dims) if dims else y
        return y.transpose(-2, -1) if self.transpose else y


_VIEWS = {
    "none": (View(),),
    "hflip": (View(), View(hflip=True)),
    "flip": (View(), View(hflip=True), View(vflip=True)),
    "dihedral": tuple(
        View(t, h, v) for t in (False, True) for h in (False, True) for v in (False, True)
    ),
}


def resolve_tta(tta: bool | str) -> str:
    """The mode of a ``tta`` argument: False -> "none", True -> "flip", or a mode's name."""
    if isinstance(tta, bool):
        return "flip" if tta else "none"
    if isinstance(tta, str) and tta.lower() in TTA_MODES:
        return tta.lower()
    raise ValueError(
        f"tta must be one of {TTA_MODES} (or True = 'flip', False = 'none'), got {tta!r}"
    )


def views(mode: bool | str) -> tuple[View, ...]:
    """The views of a mode, identity first."""
    return _VIEWS[resolve_tta(mode)]


def mean_softmax(
    model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mode: bool | str
) -> torch.Tensor:
    """(B, C, H, W) -> (B, K, H, W) float32: the softmax of ``model`` averaged over the views
    of ``mode``, each mapped back. Views are fed channels-last, the layout the model runs in;
    with "flip" this is, operation for operation, the 3-view average predict has always done."""
    selected = views(mode)
    total: torch.Tensor | None = None
    for view in selected:
        inputs = view.apply(x).contiguous(memory_format=torch.channels_last)
        probs = view.invert(model(inputs).float().softmax(dim=1))  # (B, K, H, W)
        if total is None:
            total = probs
        else:
            total += probs
    assert total is not None
    if len(selected) > 1:
        total /= float(len(selected))
    return total
