"""ResNet-18/34/50 encoders with torchvision's module names, so its state dicts load as they are.

The layout mirrors torchvision.models.resnet (v1.5: the stride of a Bottleneck sits on its 3x3
conv) without the classifier (`avgpool`, `fc`): `conv1`, `bn1`, `layer1` .. `layer4`, each
block `conv1`, `bn1`, `conv2`, `bn2` (`conv3`, `bn3` in a Bottleneck) and `downsample.0/1`.
"""

from __future__ import annotations

import torch
from torch import nn

RESNET_LAYERS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3), "resnet50": (3, 4, 6, 3)}
"""Blocks per stage; resnet18/34 use BasicBlock, resnet50 Bottleneck."""


def _downsample(cin: int, cout: int, stride: int) -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual (ResNet-18/34)."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = _downsample(cin, width, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand x4, with a residual (ResNet-50)."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetEncoder(nn.Module):
    """Features at strides 2 (after the stem's ReLU), 4 (layer1), 8, 16 and 32 (layer4)."""

    first_conv = "conv1"
    """State-dict key prefix of the first convolution (adapted for in_channels != 3)."""

    def __init__(self, name: str, in_channels: int) -> None:
        super().__init__()
        block = Bottleneck if name == "resnet50" else BasicBlock
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        cin = 64
        stages = []
        for i, blocks in enumerate(RESNET_LAYERS[name]):
            width, stride = 64 * 2**i, 1 if i == 0 else 2
            layer = []
            for j in range(blocks):
                layer.append(block(cin, width, stride if j == 0 else 1))
                cin = width * block.expansion
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.channels = (64, *(64 * 2**i * block.expansion for i in range(4)))
        """Channels of the five features, stride 2 first."""
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f2 = self.relu(self.bn1(self.conv1(x)))  # (B, 64, H/2, W/2)
        f4 = self.layer1(self.maxpool(f2))  # (B, c1, H/4, W/4)
        f8 = self.layer2(f4)  # (B, c2, H/8, W/8)
        f16 = self.layer3(f8)  # (B, c3, H/16, W/16)
        f32 = self.layer4(f16)  # (B, c4, H/32, W/32)
        return [f2, f4, f8, f16, f32]
