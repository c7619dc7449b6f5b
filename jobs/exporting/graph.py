"""The modules that are exported: the loaded model wrapped so that its graph takes what users
have.

`AnySize` puts the eager model's padding inside the graph: the input is padded to a multiple of
the model's ``required_multiple`` (2**depth for the plain UNet, 32 for the pretrained encoders)
with reflect, or replicate when a pad is not smaller than its side (the rule of
`unet_core.model.pad_to_multiple`), the model runs on that, and its logits are cropped back
(an ensemble: each member so, `any_size`). The padding is index arithmetic (`pad_indices`:
``arange``, ``where``, ``index_select``), the choice between reflect and replicate a tensor
``where`` rather than a Python ``if``, so `torch.export` traces one graph that holds for every
H x W (1 x 1, odd, non-square, below the multiple) and the ONNX exporter writes ops that every
runtime has (Range, Where, Gather).

`UInt8Mask` is the ``uint8-mask`` graph: (N, H, W, C) uint8 pixels in, the model's
preprocessing (`Preprocessing.shift_scale`) and `AnySize` inside, the argmax mapped to the class
map's pixel VALUES (not indices) out, (N, H, W) uint8 (uint16 when a class value is above 255).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from unet_core.checkpoint import LoadedModel
from unet_core.config import ModelConfig, PreprocessConfig
from unet_core.ensemble import Ensemble
from unet_core.ensemble import model_multiple as ensemble_multiple
from unet_core.model import required_multiple

GRAPHS = ("logits", "uint8-mask")
"""What an exported graph takes and gives (`jobs.exporting.config.ExportConfig.graph`)."""


@dataclass(frozen=True)
class GraphSpec:
    """The names, dtypes and layouts of one graph kind's input and output."""

    input_name: str
    """Name of the graph's input."""
    output_name: str
    """Name of the graph's output."""
    input_dtype: str
    """NumPy dtype name of the input."""
    input_layout: str
    """Axes of the input, e.g. NCHW."""
    output_layout: str
    """Axes of the output, e.g. NKHW."""


SPECS = {
    "logits": GraphSpec("input", "logits", "float32", "NCHW", "NKHW"),
    "uint8-mask": GraphSpec("image", "mask", "uint8", "NHWC", "NHW"),
}


def model_multiple(config: ModelConfig) -> int:
    """What a model of ``config`` pads H and W up to in eager mode (2**depth for the plain
    UNet, 32 for the pretrained encoders)."""
    return int(required_multiple(config))


def padding_multiple(model: nn.Module) -> int:
    """What ``model`` pads to; of an ensemble, the largest of its members' (each pads for
    itself)."""
    return int(ensemble_multiple(model))


def any_size(model: nn.Module) -> nn.Module:
    """``model`` with its padding in the graph: `AnySize` around it, or around each member of
    an ensemble (members of different multiples each pad as they do in eager mode)."""
    if isinstance(model, Ensemble):
        return Ensemble([any_size(member) for member in model.members])
    return AnySize(model, model_multiple(model.config))


def pad_indices(size, multiple: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """For a side of ``size`` (an int or a symbolic size): the source rows of the side padded
    up to a multiple of ``multiple`` under reflect and under replicate, each (padded,) int64.
    Reflect's indices hold only when the pad is smaller than the side (then its least index is
    >= 0); they are clamped so that both are valid indices either way."""
    padded = (size + multiple - 1) // multiple * multiple
    rows = torch.arange(padded, device=device)  # (padded,)
    last = size - 1
    reflect = torch.where(rows <= last, rows, 2 * last - rows)  # F.pad reflect, when pad < size
    replicate = torch.clamp(rows, max=last)  # F.pad replicate
    return reflect, replicate


class AnySize(nn.Module):
    """``model`` with its padding in the graph: (N, C, H, W) float32 -> (N, K, H, W) logits for
    every H, W >= 1, equal to ``model``'s eager forward (which pads the same way)."""

    def __init__(self, model: nn.Module, multiple: int) -> None:
        super().__init__()
        self.model = model
        self.multiple = multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        reflect_h, replicate_h = pad_indices(h, self.multiple, x.device)
        reflect_w, replicate_w = pad_indices(w, self.multiple, x.device)
        # reflect on both sides only when both pads are smaller than their sides (eager's rule)
        reflect = (reflect_h.min() >= 0) & (reflect_w.min() >= 0)  # () bool tensor
        rows = torch.where(reflect, reflect_h, replicate_h).clamp(min=0)
        cols = torch.where(reflect, reflect_w, replicate_w).clamp(min=0)
        padded = x.index_select(2, rows).index_select(3, cols)  # (N, C, H_pad, W_pad)
        logits = self.model(padded)  # (N, K, H_pad, W_pad)
        # cropped by index, not by slicing: a slice's bounds are guards torch.export cannot prove
        crop_h, crop_w = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
        return logits.index_select(2, crop_h).index_select(3, crop_w)  # (N, K, H, W)


class UInt8Mask(nn.Module):
    """(N, H, W, C) uint8 -> (N, H, W) class values: the normalisation of ``preprocess``
    ((x - shift) * scale, as `unet_core.transforms.normalize_batch`), `any_size`, argmax over the
    classes, each index replaced by its class's pixel value."""

    def __init__(self, model: nn.Module, preprocess: PreprocessConfig, values: list[int]) -> None:
        super().__init__()
        self.logits = any_size(model)
        shift, scale = (torch.from_numpy(v).view(1, -1, 1, 1) for v in preprocess.shift_scale())
        self.register_buffer("shift", shift)
        self.register_buffer("scale", scale)
        self.register_buffer("values", torch.tensor(values, dtype=mask_dtype(values)))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.permute(0, 3, 1, 2).float()  # (N, C, H, W)
        classes = self.logits((x - self.shift) * self.scale).argmax(dim=1)  # (N, H, W) int64
        return self.values[classes]  # (N, H, W) uint8 (or uint16)


def mask_dtype(values: list[int]) -> torch.dtype:
    """uint8 when every class value fits in 8 bits, else uint16."""
    return torch.uint8 if max(values) <= 255 else torch.uint16


class GraphRefused(ValueError):
    """The graph asked for cannot take this model's inputs."""

    exit_kind = "usage"  # exit code 2 (jobs.common.exits)


def uint8_refusal(preprocess: PreprocessConfig) -> str | None:
    """Why a model's preprocessing cannot take uint8 images (None: it can): clip_zscore models
    were fitted to pixels in their own values (16-bit, float), which 8 bits do not hold."""
    if preprocess.scheme in ("legacy_uint8", "scale_zscore"):
        return None
    return (
        f"--graph uint8-mask takes 8-bit images, and this model's preprocessing "
        f"({preprocess.scheme}, clipped to {list(preprocess.clip_low)}..{list(preprocess.clip_high)}) "
        "reads pixels in their own values (16-bit or float data); export --graph logits and "
        "normalise as the file's metadata says (preprocess)"
    )


def build_graph(loaded: LoadedModel, model: nn.Module, graph: str) -> nn.Module:
    """The module to export for ``graph`` (one of GRAPHS), around ``model`` (eval, fp32; a
    single model or an ensemble)."""
    if graph == "logits":
        return any_size(model).eval()
    if graph == "uint8-mask":
        reason = uint8_refusal(loaded.preprocess)
        if reason:
            raise GraphRefused(reason)
        return UInt8Mask(model, loaded.preprocess, loaded.class_map.values).eval()
    raise ValueError(f"--graph must be one of {', '.join(GRAPHS)}, got {graph!r}")
