"""EfficientNet-Lite0/1/2 encoders with the state-dict keys of `efficientnet_lite_pytorch`.

Lite: ReLU6, no squeeze-excitation, stem (32) and the first and last stages not scaled; width and
depth multipliers 1.0/1.0 (lite0), 1.0/1.1 (lite1), 1.1/1.2 (lite2). Keys: `_conv_stem`, `_bn0`,
`_blocks.N._expand_conv`, `._bn0`, `._depthwise_conv`, `._bn1`, `._project_conv`, `._bn2`. The
classifier head (`_conv_head`, `_bn1`, `_fc`) is not part of the encoder.

Padding mirrors the reference's static TensorFlow "same" padding: fixed per conv, computed for
the variant's native resolution (224, 240, 260 pixels) and applied to every input. A stride-1 conv
of kernel k pads k // 2 on each side; a stride-2 conv pads (k - 2) // 2 before and k // 2 after
(top/left, bottom/right) where the native side at that conv is even, (k - 1) // 2 on each side
where it is odd (lite1: the last stride-2 conv; lite2: the last three). Every input side the UNet
gives the encoder is a multiple of 32, so every stride-2 conv halves it exactly either way.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LITE_SCALING = {
    "efficientnet-lite0": (1.0, 1.0, 224),
    "efficientnet-lite1": (1.0, 1.1, 240),
    "efficientnet-lite2": (1.1, 1.2, 260),
}
"""(width, depth) multipliers and native resolution (which sets the padding) of each variant."""

STAGES = (
    # repeats, kernel, stride, expand ratio, input filters, output filters
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
"""EfficientNet-B0's stages (efficientnet_lite_builder.py), before scaling."""

BN_MOMENTUM = 0.01
"""PyTorch momentum of TensorFlow's 0.99 decay, as in the reference."""
BN_EPS = 1e-3
DROP_CONNECT_RATE = 0.2
"""Stochastic depth of the residual blocks in training, scaled by block index / block count."""


def round_filters(filters: int, width: float) -> int:
    """Scaled channels rounded to a multiple of 8, never more than 10% below (TF's rule)."""
    if width == 1.0:
        return filters
    scaled = filters * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return int(rounded + 8 if rounded < 0.9 * scaled else rounded)


class SameConv2d(nn.Conv2d):
    """Conv without bias, with TensorFlow "same" padding for a native input side `size`: the
    reference's Conv2dStaticSamePadding (module doc)."""

    def __init__(
        self, cin: int, cout: int, kernel: int, size: int, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__(cin, cout, kernel, stride=stride, groups=groups, bias=False)
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        self.same_pad = (total // 2, total - total // 2) * 2  # (left, right, top, bottom)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.same_pad):
            x = F.pad(x, self.same_pad)
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=BN_MOMENTUM, eps=BN_EPS)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand (unless ratio 1), depthwise kxk, 1x1 project, ReLU6."""

    def __init__(
        self, cin: int, cout: int, kernel: int, stride: int, expand: int, size: int
    ) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(cin, mid, 1, size)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, size, stride=stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1, size)
        self._bn2 = _bn(cout)
        self._swish = nn.ReLU6()
        self.residual = stride == 1 and cin == cout
        self.drop_rate = 0.0
        """Drop-connect probability in training (set by the encoder from the block's index)."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.expand:
            x = self._swish(self._bn0(self._expand_conv(x)))
        x = self._swish(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        if not self.residual:
            return x
        if self.training and self.drop_rate > 0:
            keep = 1.0 - self.drop_rate
            mask = torch.floor(
                keep + torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device)
            )
            x = x / keep * mask
        return x + inputs


class EfficientNetLiteEncoder(nn.Module):
    """Features at strides 2, 4, 8, 16, 32: the outputs of the last block at each stride."""

    first_conv = "_conv_stem"
    """State-dict key prefix of the first convolution (adapted for in_channels != 3)."""

    def __init__(self, name: str, in_channels: int) -> None:
        super().__init__()
        width, depth, size = LITE_SCALING[name]
        self._conv_stem = SameConv2d(in_channels, 32, 3, size, stride=2)
        size = math.ceil(size / 2)  # the native side at each block's input
        self._bn0 = _bn(32)
        self._swish = nn.ReLU6()
        blocks: list[MBConvBlock] = []
        self.taps: list[int] = []
        """Indices of the blocks whose outputs are the features (the last before a stride 2)."""
        channels = []
        last = len(STAGES) - 1
        for i, (repeats, kernel, stride, expand, cin, cout) in enumerate(STAGES):
            cin = 32 if i == 0 else round_filters(cin, width)
            cout = round_filters(cout, width)
            if 0 < i < last:  # the first and last stages keep their repeats (fix_head_stem)
                repeats = int(math.ceil(depth * repeats))
            if stride == 2 and blocks:
                self.taps.append(len(blocks) - 1)
                channels.append(cin)
            for j in range(repeats):
                first = j == 0
                blocks.append(
                    MBConvBlock(
                        cout if j else cin, cout, kernel, stride if first else 1, expand, size
                    )
                )
                size = math.ceil(size / stride) if first else size
        self.taps.append(len(blocks) - 1)
        channels.append(cout)
        self._blocks = nn.ModuleList(blocks)
        for idx, block in enumerate(blocks):
            block.drop_rate = DROP_CONNECT_RATE * idx / len(blocks)
        self.channels = tuple(channels)
        """Channels of the five features, stride 2 first."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self._swish(self._bn0(self._conv_stem(x)))  # (B, 32, H/2, W/2)
        features = []
        for idx, block in enumerate(self._blocks):
            x = block(x)
            if idx in self.taps:
                features.append(x)  # (B, channels[k], H / 2**(k+1), W / 2**(k+1))
        return features
