"""Inference: whole images, batches of equal-size images, and sliding-window tiles.

All paths run under ``torch.inference_mode`` with channels-last inputs, bf16 autocast on CUDA
and on CPUs with native bf16, and select the class on the device so only uint8 masks and
float confidences come back.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from unet_core.config import PreprocessConfig


@dataclass
class Prediction:
    mask: np.ndarray
    """(H, W) uint8 class indices."""
    confidence: np.ndarray
    """(H, W) float32 softmax probability of the chosen class."""


def resolve_device(device: torch.device | str | None = None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_supports_bf16() -> bool:
    """Native bf16 math (AVX512-BF16 or AMX); emulated bf16 is slower than fp32."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def autocast_context(device: torch.device | str, enabled: bool | None = None):
    """bf16 autocast on CUDA, and on CPU when it has native bf16; otherwise a no-op."""
    device = torch.device(device)
    if enabled is None:
        enabled = device.type == "cuda" or (device.type == "cpu" and cpu_supports_bf16())
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def prepare_for_inference(model: nn.Module, device: torch.device | str | None = None) -> nn.Module:
    device = resolve_device(device)
    return model.eval().to(device).to(memory_format=torch.channels_last)


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _probs(model: nn.Module, x: torch.Tensor, *, tta: bool, amp: bool | None) -> torch.Tensor:
    """(B, C, H, W) normalised -> (B, K, H, W) float32 softmax, flip-TTA averaged."""
    x = x.to(_model_device(model)).contiguous(memory_format=torch.channels_last)
    with autocast_context(x.device, amp):
        probs = model(x).float().softmax(dim=1)
        if tta:
            probs = probs + model(x.flip(-1)).float().softmax(dim=1).flip(-1)
            probs = probs + model(x.flip(-2)).float().softmax(dim=1).flip(-2)
            probs = probs / 3.0
    return probs


@torch.inference_mode()
def predict_tensor(
    model: nn.Module, batch: torch.Tensor, *, tta: bool = False, amp: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) -> uint8 classes (B, H, W) and confidence (B, H, W), on the model's device."""
    confidence, classes = _probs(model, batch, tta=tta, amp=amp).max(dim=1)
    return classes.to(torch.uint8), confidence


def _as_array(image: np.ndarray | Image.Image, channels: int) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = image.convert("L" if channels == 1 else "RGB")
        arr = np.asarray(image)
    else:
        arr = np.asarray(image)
        if arr.dtype != np.uint8:
            raise ValueError(f"expected a uint8 image, got {arr.dtype}; convert it to 8 bits")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.shape[2] == 1 and channels == 3:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 3 and channels == 1:
        arr = np.asarray(Image.fromarray(arr).convert("L"))[:, :, None]
    return arr


def _ramp(n: int, overlap: int) -> np.ndarray:
    """1-D blending weights: linear ramps over the overlap at both ends, floor 1e-3."""
    ramp = np.ones(n, dtype=np.float32)
    if overlap > 0:
        edge = (np.arange(overlap, dtype=np.float32) + 1) / (overlap + 1)
        ramp[:overlap] = np.minimum(ramp[:overlap], edge)
        ramp[-overlap:] = np.minimum(ramp[-overlap:], edge[::-1])
    return np.maximum(ramp, 1e-3)


def _starts(size: int, tile: int, stride: int) -> list[int]:
    starts = list(range(0, max(1, size - tile + 1), stride))
    if starts[-1] != size - tile:
        starts.append(size - tile)
    return starts


def _predict_tiled(
    model: nn.Module,
    x: np.ndarray,
    *,
    tile: int,
    overlap: int,
    tta: bool,
    amp: bool | None,
    num_classes: int,
    tile_batch: int,
) -> Prediction:
    """Sliding window over (C, H, W), accumulating weighted softmax one row band at a time.

    Memory: a (K, tile, W) float32 accumulator for the current band of rows plus the tiles in
    flight; finished rows are reduced to uint8 class + float32 confidence straight away, so a
    full-resolution (K, H, W) tensor is never held.
    """
    _, h, w = x.shape
    th, tw = min(tile, h), min(tile, w)
    stride = max(1, tile - overlap)
    ys, xs = _starts(h, th, stride), _starts(w, tw, stride)
    weight = np.outer(_ramp(th, min(overlap, th // 2)), _ramp(tw, min(overlap, tw // 2)))
    mask = np.empty((h, w), dtype=np.uint8)
    confidence = np.empty((h, w), dtype=np.float32)
    acc = np.zeros((num_classes, th, w), dtype=np.float32)  # rows [base, base + th)
    wsum = np.zeros((th, w), dtype=np.float32)
    base = 0
    for i, y in enumerate(ys):
        for j in range(0, len(xs), tile_batch):
            chunk = xs[j : j + tile_batch]
            batch = torch.from_numpy(np.stack([x[:, y : y + th, c : c + tw] for c in chunk]))
            with torch.inference_mode():
                probs = _probs(model, batch, tta=tta, amp=amp).cpu().numpy()  # (b, K, th, tw)
            for p, c in zip(probs, chunk, strict=True):
                acc[:, y - base : y - base + th, c : c + tw] += p * weight
                wsum[y - base : y - base + th, c : c + tw] += weight
        done = (ys[i + 1] if i + 1 < len(ys) else h) - base  # rows no later tile touches
        band = acc[:, :done] / wsum[None, :done]
        mask[base : base + done] = band.argmax(axis=0)
        confidence[base : base + done] = band.max(axis=0)
        acc = np.concatenate([acc[:, done:], np.zeros_like(acc[:, :done])], axis=1)
        wsum = np.concatenate([wsum[done:], np.zeros_like(wsum[:done])], axis=0)
        base += done
    return Prediction(mask=mask, confidence=confidence)


def predict(
    model: nn.Module,
    image: np.ndarray | Image.Image,
    *,
    preprocess: PreprocessConfig,
    tta: bool = False,
    tile_size: int | None = 512,
    tile_overlap: int = 64,
    amp: bool | None = None,
    tile_batch: int = 4,
) -> Prediction:
    """Class mask and confidence for one image of any size.

    Images larger than ``tile_size`` on either side are predicted in overlapping tiles
    (``tile_overlap`` pixels) blended with linear ramps. The model should be prepared with
    `prepare_for_inference` (eval mode on its device).
    """
    arr = _as_array(image, preprocess.channels)
    x = preprocess.normalize(arr)  # (C, H, W)
    h, w = x.shape[1:]
    if tile_size and (h > tile_size or w > tile_size):
        if tile_overlap >= tile_size:
            raise ValueError(f"tile_overlap ({tile_overlap}) must be < tile_size ({tile_size})")
        num_classes = model.config.num_classes if hasattr(model, "config") else None
        if num_classes is None:
            raise ValueError("tiled prediction needs a UNet (model.config.num_classes)")
        return _predict_tiled(
            model,
            x,
            tile=tile_size,
            overlap=tile_overlap,
            tta=tta,
            amp=amp,
            num_classes=num_classes,
            tile_batch=tile_batch,
        )
    classes, conf = predict_tensor(model, torch.from_numpy(x)[None], tta=tta, amp=amp)
    return Prediction(mask=classes[0].cpu().numpy(), confidence=conf[0].float().cpu().numpy())


def predict_batch(
    model: nn.Module,
    images: list[np.ndarray | Image.Image],
    *,
    preprocess: PreprocessConfig,
    tta: bool = False,
    amp: bool | None = None,
) -> list[Prediction]:
    """One forward pass for a list of equal-size images."""
    if not images:
        return []
    arrays = [preprocess.normalize(_as_array(im, preprocess.channels)) for im in images]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"predict_batch needs equal-size images, got shapes {sorted(shapes)}")
    classes, conf = predict_tensor(model, torch.from_numpy(np.stack(arrays)), tta=tta, amp=amp)
    classes, conf = classes.cpu().numpy(), conf.float().cpu().numpy()
    return [Prediction(mask=classes[i], confidence=conf[i]) for i in range(len(arrays))]
