"""A UNet decoder over a pretrainable encoder (ResNet, EfficientNet-Lite).

Decoder rule: the block at stride 2**i has base_width * 2**i channels (i = 4 .. 0: with
base_width 16 that is 256, 128, 64, 32, 16, segmentation_models_pytorch's default). Each block
upsamples x2 (the model's `upsampling`), concatenates the encoder's feature of that stride and
applies (3x3 conv, norm, ReLU) twice; the last block upsamples to full resolution with no skip;
a 1x1 conv gives the logits. Inputs of any size are padded to a multiple of 32 (reflect, or
replicate when too small) and the logits cropped back.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from unet_core.config import ModelConfig
from unet_core.encoders.efficientnet import LITE_SCALING, EfficientNetLiteEncoder
from unet_core.encoders.resnet import RESNET_LAYERS, ResNetEncoder
from unet_core.model import Up, pad_to_multiple

STAGES = 5
"""Stride-2 stages of every pretrained encoder: features at strides 2 .. 32."""


def build_encoder(name: str, in_channels: int) -> ResNetEncoder | EfficientNetLiteEncoder:
    """The encoder called `name` (a ModelConfig.encoder other than unet), randomly initialised."""
    if name in RESNET_LAYERS:
        return ResNetEncoder(name, in_channels)
    if name in LITE_SCALING:
        return EfficientNetLiteEncoder(name, in_channels)
    raise ValueError(
        f"no pretrained encoder {name!r}; choose one of {(*RESNET_LAYERS, *LITE_SCALING)}"
    )


class EncoderUNet(nn.Module):
    """UNet decoder (module doc) over `config.encoder`; `model(x).shape == (B, K, H, W)` for
    every `x.shape == (B, C, H, W)`. The encoder's weights load with
    unet_core.encoders.load_encoder_weights; `depth` is not used (always 5 stages)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self._config = ModelConfig(**config.to_dict())
        self.encoder = build_encoder(config.encoder, config.in_channels)
        skips = self.encoder.channels
        widths = [config.base_width * 2**i for i in range(STAGES)]  # stride 2**i
        cin = skips[-1]
        blocks = []
        for i in reversed(range(STAGES)):  # to stride 2**i: the skip of stride 2**i, none at 1
            skip = skips[i - 1] if i else 0
            blocks.append(Up(cin, widths[i], config.norm, config.upsampling, skip=skip))
            cin = widths[i]
        self.decoder = nn.ModuleList(blocks)
        self.dropout = nn.Dropout2d(config.dropout) if config.dropout > 0 else nn.Identity()
        self.head = nn.Conv2d(widths[0], config.num_classes, kernel_size=1)
        for m in [*self.decoder.modules(), self.head]:
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def config(self) -> ModelConfig:
        """A copy of the architecture settings (enough to rebuild the model)."""
        return ModelConfig(**self._config.to_dict())

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        """The pretrainable encoder's parameters."""
        yield from self.encoder.parameters()

    def decoder_parameters(self) -> Iterator[nn.Parameter]:
        """The decoder's and the 1x1 head's parameters."""
        yield from self.decoder.parameters()
        yield from self.head.parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, 2**STAGES)  # (B, C, H_pad, W_pad)
        features = self.encoder(x)  # strides 2, 4, 8, 16, 32
        x = self.dropout(features.pop())  # (B, c5, H_pad / 32, W_pad / 32)
        for block in self.decoder:
            x = block(x, features.pop() if features else None)  # (B, w_i, H_pad / 2^i, W_pad / 2^i)
        logits = self.head(x)  # (B, K, H_pad, W_pad)
        return logits[..., :h, :w]  # (B, K, H, W)
