"""Where and how a model runs for inference: the device, a prepared copy of the model (eval
mode, BatchNorm folded, channels-last, optionally compiled), cuDNN autotuning, pinned copies
to the GPU and the default tile by device. `unet_core.predict` uses these (and re-exports
them); the segment and evaluate jobs call them the same way.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from unet_core.compiled import compile_model
from unet_core.fold import fold_batchnorm

__all__ = [
    "TILE_SIZE_CPU",
    "TILE_SIZE_CUDA",
    "default_tile_size",
    "enable_cudnn_benchmark",
    "prepare_for_inference",
    "resolve_device",
    "to_device",
]

TILE_SIZE_CPU = 512
"""`default_tile_size` on the CPU: the library default of ``predict(tile_size=...)``."""
TILE_SIZE_CUDA = 1024
"""`default_tile_size` on CUDA: fewer, larger tiles keep the GPU busy and shrink the overlap share."""


def resolve_device(device: torch.device | str | None = None) -> torch.device:
    """The given device, else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_tile_size(device: torch.device | str) -> int:
    """A tile side for ``device``: 512 on the CPU (``predict``'s default), 1024 on CUDA."""
    return TILE_SIZE_CUDA if torch.device(device).type == "cuda" else TILE_SIZE_CPU


def enable_cudnn_benchmark(device: torch.device | str) -> bool:
    """On CUDA, let cuDNN time its convolution algorithms per input shape and keep the fastest.

    Sets the process-wide ``torch.backends.cudnn.benchmark``. It pays where shapes repeat
    (tiles of one size, batches of equal-size images): each new shape costs one timing pass
    of a few forwards, so leave it off for streams of many different sizes. The algorithm is
    chosen per process, so two processes may differ in the last bits of float rounding. Returns
    whether it was set (False, and nothing changed, off CUDA).
    """
    if torch.device(device).type != "cuda":
        return False
    torch.backends.cudnn.benchmark = True
    return True


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor`` on ``device``. From the host to CUDA the copy starts from page-locked
    (pinned) memory and is asynchronous (``non_blocking``), so it overlaps work already queued
    on the GPU; elsewhere a plain ``.to(device)``, a no-op when it is there already."""
    device = torch.device(device)
    if device.type == "cuda" and tensor.device.type == "cpu":
        if not tensor.is_pinned():
            tensor = tensor.pin_memory()
        return tensor.to(device, non_blocking=True)
    return tensor.to(device)


def prepare_for_inference(
    model: nn.Module,
    device: torch.device | str | None = None,
    *,
    fold_bn: bool = True,
    compile: bool = False,
) -> nn.Module:
    """A copy of ``model`` made for fast inference; ``model`` itself is not changed.

    The copy is in eval mode, on ``device`` (default: `resolve_device`), with BatchNorm folded
    into the convolutions before it (``fold_bn``, `unet_core.fold.fold_batchnorm`; GroupNorm
    and norm-free models are copied as they are) and channels-last weights; with ``compile``,
    wrapped by `compile_model` (default settings). Every prediction path gives the same output
    for the same prepared model and the same batch, so a job and `predict` agree bit for bit
    when both use one. Deep-copied: the model's memory is held twice while this runs.
    """
    prepared = fold_batchnorm(model) if fold_bn else copy.deepcopy(model).eval()
    prepared = prepared.to(resolve_device(device)).to(memory_format=torch.channels_last)
    return compile_model(prepared) if compile else prepared
