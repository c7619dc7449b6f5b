"""Reading encoder weights from a file and loading them into a model's encoder."""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""ImageNet per-channel mean (RGB, pixel / 255) that the pretrained encoders were trained with."""
IMAGENET_STD = (0.229, 0.224, 0.225)
"""ImageNet per-channel standard deviation (RGB, pixel / 255)."""


def read_state_dict(source: str | os.PathLike | bytes, *, name: str) -> dict[str, torch.Tensor]:
    """A state dict from a file path or the file's bytes (torch.load, weights_only=True);
    `name` (the path or URI the user gave) is what errors say."""
    raise NotImplementedError("read_state_dict: coming")


def load_encoder_weights(
    model: nn.Module, state_dict: dict[str, torch.Tensor], *, source: str
) -> str:
    """Load `state_dict` into the model's encoder; returns one log line."""
    raise NotImplementedError("load_encoder_weights: coming")


def imagenet_weights_path(encoder: str) -> str:
    """The ImageNet weights file of `encoder` (efficientnet-lite0 through the pretrained extra)."""
    raise NotImplementedError("imagenet_weights_path: coming")
