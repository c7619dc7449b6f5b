"""UNet (Ronneberger et al. 2015) with same-size logits for any input height and width.

Pure PyTorch: no device placement, DDP, AMP or compile here (see unet_core.predict / engine).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from unet_core.config import ModelConfig

MAX_GROUPS = 8
"""GroupNorm uses gcd(width, 8) groups: always a divisor of the width, 8 for the usual widths."""


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(channels, MAX_GROUPS), channels)
    return nn.Identity()


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad (B, C, H, W) at the bottom and right to multiples of `multiple`: reflect, or replicate
    where the input is too small to reflect (pad >= size). Callers crop the output back."""
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if not (pad_h or pad_w):
        return x
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


class DoubleConv(nn.Sequential):
    """(3x3 conv, norm, ReLU) twice; padding 1 keeps the size. Convs carry a bias only without norm."""

    def __init__(self, cin: int, cout: int, norm: str, dropout: float = 0.0) -> None:
        bias = norm == "none"
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, 3, padding=1, bias=bias),
            _norm(norm, cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=bias),
            _norm(norm, cout),
            nn.ReLU(inplace=True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        super().__init__(*layers)


class Up(nn.Module):
    """Upsample x2 to `cout` channels (2x2 transposed conv, or bilinear + 1x1 conv), concatenate
    the skip of `skip` channels (default `cout`; 0: no skip), double conv."""

    def __init__(
        self, cin: int, cout: int, norm: str, upsampling: str, skip: int | None = None
    ) -> None:
        super().__init__()
        if upsampling == "transpose":
            self.up = nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2)
        else:
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(cin, cout, kernel_size=1),
            )
        self.conv = DoubleConv(cout + (cout if skip is None else skip), cout, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = self.up(x)  # (B, cin, h, w) -> (B, cout, 2h, 2w)
        if skip is not None:
            x = torch.cat([skip, x], dim=1)  # (B, skip + cout, 2h, 2w)
        return self.conv(x)  # (B, cout, 2h, 2w)


class UNet(nn.Module):
    """Encoder of `depth` 2x2 poolings, symmetric decoder with skip connections, 1x1 head.

    Widths are base_width * 2**level (64 ... 1024 in the paper). Inputs of any size are padded
    (reflect) to a multiple of 2**depth and the logits cropped back, so
    ``model(x).shape == (B, num_classes, H, W)`` for every ``x.shape == (B, C, H, W)``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        base_width: int = 64,
        depth: int = 4,
        norm: str = "batch",
        upsampling: str = "transpose",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        # ModelConfig validates every argument with a message that says what to change.
        self._config = ModelConfig(
            in_channels=in_channels,
            num_classes=num_classes,
            base_width=base_width,
            depth=depth,
            norm=norm,
            upsampling=upsampling,
            dropout=dropout,
        )
        widths = [base_width * 2**i for i in range(depth + 1)]
        self.stem = DoubleConv(in_channels, widths[0], norm)
        # down[i]: pool, then widths[i] -> widths[i + 1]; the last one is the bottleneck.
        self.down = nn.ModuleList(
            DoubleConv(widths[i], widths[i + 1], norm, dropout if i == depth - 1 else 0.0)
            for i in range(depth)
        )
        self.up = nn.ModuleList(
            Up(widths[i + 1], widths[i], norm, upsampling) for i in reversed(range(depth))
        )
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=1)
        self._init_weights()

    @classmethod
    def from_config(cls, config: ModelConfig) -> UNet:
        return cls(
            config.in_channels,
            config.num_classes,
            base_width=config.base_width,
            depth=config.depth,
            norm=config.norm,
            upsampling=config.upsampling,
            dropout=config.dropout,
        )

    @property
    def config(self) -> ModelConfig:
        """A copy of the architecture settings (enough to rebuild the model)."""
        return ModelConfig(**self._config.to_dict())

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        """The stem and the down path (the bottleneck included)."""
        yield from self.stem.parameters()
        yield from self.down.parameters()

    def decoder_parameters(self) -> Iterator[nn.Parameter]:
        """The up path and the 1x1 head."""
        yield from self.up.parameters()
        yield from self.head.parameters()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, 2**self._config.depth)  # (B, C, H_pad, W_pad)
        x = self.stem(x)  # (B, w0, H_pad, W_pad)
        skips = [x]
        for block in self.down:
            x = block(F.max_pool2d(x, 2))  # (B, w_{i+1}, H_pad / 2^(i+1), W_pad / 2^(i+1))
            skips.append(x)
        skips.pop()  # the bottleneck output is x itself
        for block in self.up:
            x = block(x, skips.pop())  # (B, w_i, H_pad / 2^i, W_pad / 2^i)
        logits = self.head(x)  # (B, K, H_pad, W_pad)
        return logits[..., :h, :w]  # (B, K, H, W)


def required_multiple(config: ModelConfig) -> int:
    """What the model pads H and W up to internally: 2**depth for unet, 32 for the others."""
    return 2**config.depth if config.encoder == "unet" else 32


def build_model(config: ModelConfig) -> nn.Module:
    """The model of `config.encoder`: UNet for unet (bit for bit `UNet.from_config`), else a
    UNet decoder over a pretrainable encoder (unet_core.encoders.EncoderUNet). Every model has
    `.config`, `encoder_parameters()`, `decoder_parameters()` and gives logits of the input's
    H x W for any input size."""
    if config.encoder == "unet":
        return UNet.from_config(config)
    from unet_core.encoders.unet import EncoderUNet

    return EncoderUNet(config)
