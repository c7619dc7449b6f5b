"""Pretrainable encoders for the UNet decoder: ResNet-18/34/50 (torchvision's state-dict keys),
EfficientNet-Lite0/1/2 (the keys of `efficientnet_lite_pytorch`), and loading their weights from
a file, with the first convolution adapted to the input's channels (docs/encoders.md).

Pure PyTorch: nothing here downloads; weights come from a file the caller names.
"""

from unet_core.encoders.weights import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    imagenet_weights_path,
    load_encoder_weights,
    read_state_dict,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "imagenet_weights_path",
    "load_encoder_weights",
    "read_state_dict",
]
