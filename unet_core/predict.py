"""Inference: one image, a batch of equal-size images, or sliding-window tiles for large ones.

Every path runs the model in eval mode under ``torch.inference_mode`` with channels-last input,
mixed precision (`unet_core.precision.autocast_dtype`: bf16 on CUDA and on CPUs with native bf16,
fp16 on CUDA GPUs before compute capability 8.0), and picks the class on the device, so only
uint8 masks and float32 confidences travel back to the host. Images travel to the device as
uint8 (pinned, asynchronous copies on CUDA: `to_device`) and are normalised there
(`unet_core.transforms.normalize_batch`, the arithmetic of `PreprocessConfig.normalize`). Results
are deterministic, and ``predict(model, im)`` equals ``predict_batch(model, [im])[0]`` exactly
(same code path).

Prepare the model once with `prepare_for_inference` (`unet_core.inference_device`: folded
BatchNorm, channels-last, optional ``torch.compile``), as the jobs do.

Memory of tiled prediction (image H x W, K classes, C channels, tile T, B = ``tile_batch``):

- input: the uint8 image itself; one band of tile rows, (T, W, C) uint8, on the model's device;
  tiles are normalised there B at a time, (B, C, T, T) float32;
- accumulator: one band of tile rows, (K, T, W) float32 probabilities + (T, W) weights, on the
  model's device. Each finished band is reduced to class + confidence at once, so the full
  (K, H, W) probability tensor is never held (it is a bound of O(K * T * W), not O(K * H * W));
- per forward pass: the model's activations for B tiles and their (B, K, T, T) probabilities;
- output: (H, W) uint8 mask + (H, W) float32 confidence, 5 bytes per pixel.

For a 4000 x 4000 RGB image, K = 3, T = 1024: 48 MB image, 12 MB input band, 49 MB accumulator
band, 80 MB output.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from unet_core.config import PreprocessConfig
from unet_core.image_decode import model_input
from unet_core.inference_device import (
    default_tile_size,
    enable_cudnn_benchmark,
    prepare_for_inference,
    resolve_device,
    to_device,
)
from unet_core.precision import autocast_context, cpu_supports_bf16
from unet_core.transforms import normalize_batch
from unet_core.tta import mean_softmax, resolve_tta

log = logging.getLogger(__name__)

__all__ = [
    "Prediction",
    "autocast_context",  # from unet_core.precision, kept importable from here
    "cpu_supports_bf16",
    "default_tile_size",
    "enable_cudnn_benchmark",
    "needs_tiles",
    "predict",
    "predict_batch",
    "predict_tensor",
    "prepare_for_inference",
    "resolve_device",
    "to_device",
]

WINDOW_FLOOR = 1e-3
"""Smallest blending weight, so a pixel that only one tile's edge covers keeps a defined average."""


@dataclass
class Prediction:
    mask: np.ndarray
    """(H, W) uint8 class indices."""
    confidence: np.ndarray
    """(H, W) float32 softmax probability of the chosen class, in [0, 1]."""
    tiled: bool = False
    """Predicted in overlapping tiles (`needs_tiles`); False: the whole image in one pass."""


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Predict with running statistics and no dropout, then restore the caller's mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _softmax(model: nn.Module, x: torch.Tensor, *, tta: str, amp: bool | None) -> torch.Tensor:
    """(B, C, H, W) normalised -> (B, K, H, W) float32 probabilities on the model's device,
    averaged over the views of the TTA mode (`unet_core.tta`)."""
    x = to_device(x, _model_device(model)).contiguous(memory_format=torch.channels_last)
    with autocast_context(x.device, amp):
        return mean_softmax(model, x, tta)


@torch.inference_mode()
def predict_tensor(
    model: nn.Module, batch: torch.Tensor, *, tta: bool | str = False, amp: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) normalised -> classes (B, H, W) uint8 and confidence (B, H, W) float32, both
    on the model's device (the argmax and max happen there, before any copy back); ``tta`` as in
    `predict`."""
    mode = resolve_tta(tta)
    with _eval_mode(model):
        confidence, classes = _softmax(model, batch, tta=mode, amp=amp).max(dim=1)
    return classes.to(torch.uint8), confidence


def _overlap_pixels(tile_size: int, tile_overlap: float) -> int:
    """An overlap in pixels, or as a fraction of the tile when 0 < tile_overlap < 1."""
    overlap = round(tile_overlap * tile_size) if 0 < tile_overlap < 1 else int(tile_overlap)
    if not 0 <= overlap < tile_size:
        raise ValueError(
            f"tile_overlap must be in [0, tile_size) pixels or a fraction in (0, 1), got "
            f"{tile_overlap} with tile_size {tile_size}"
        )
    return overlap


def needs_tiles(h: int, w: int, tile_size: int | None) -> bool:
    """Whether `predict` tiles an H x W image at ``tile_size`` (None / 0: never tile)."""
    if tile_size is not None and tile_size < 0:
        raise ValueError(f"tile_size must be > 0, or None / 0 for no tiling; got {tile_size}")
    return bool(tile_size) and (h > tile_size or w > tile_size)


def _starts(size: int, tile: int, stride: int) -> list[int]:
    """Tile offsets along one side: every `stride`, the last one flush with the end."""
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] != size - tile:
        starts.append(size - tile)
    return starts


def _window(n: int, overlap: int, *, ramps: bool) -> torch.Tensor:
    """(n,) blending weights: linear ramps over the overlap at both ends; ones for a lone tile."""
    weight = torch.ones(n)
    r = min(overlap, n // 2)
    if ramps and r > 0:
        edge = torch.arange(1, r + 1, dtype=torch.float32) / (r + 1)
        weight[:r] = edge
        weight[n - r :] = edge.flip(0)
    return weight.clamp_min(WINDOW_FLOOR)


@torch.inference_mode()
def _predict_tiled(
    model: nn.Module,
    arr: np.ndarray,
    *,
    preprocess: PreprocessConfig,
    tile_size: int,
    overlap: int,
    tta: str,
    amp: bool | None,
    tile_batch: int,
) -> Prediction:
    """Sliding window over an HxWxC uint8 image, one band of tile rows at a time (see module doc).

    Each pixel gets the weighted mean of the softmax of every tile covering it. With a single
    tile the weights are all 1, so the result is bit-identical to untiled prediction.
    """
    h, w = arr.shape[:2]
    th, tw = min(tile_size, h), min(tile_size, w)
    stride = tile_size - overlap
    ys, xs = _starts(h, th, stride), _starts(w, tw, stride)
    device = _model_device(model)
    weight = torch.outer(
        _window(th, overlap, ramps=len(ys) > 1), _window(tw, overlap, ramps=len(xs) > 1)
    ).to(device)  # (th, tw)
    log.debug("tiled prediction of %dx%d: %d x %d tiles of %dx%d", h, w, len(ys), len(xs), th, tw)
    mask = np.empty((h, w), dtype=np.uint8)
    confidence = np.empty((h, w), dtype=np.float32)
    acc: torch.Tensor | None = None  # (K, th, W): image rows [y, y + th) of the current band
    wsum = torch.zeros(th, w, device=device)  # (th, W)
    for i, y in enumerate(ys):
        band = to_device(_host_tensor(arr[y : y + th]), device)
        for j in range(0, len(xs), tile_batch):  # band: (th, W, C) uint8 on the device
            cols = xs[j : j + tile_batch]
            tiles = torch.stack([band[:, x : x + tw] for x in cols])  # (b, th, tw, C) uint8
            probs = _softmax(model, normalize_batch(tiles, preprocess), tta=tta, amp=amp)
            if acc is None:  # (b, K, th, tw): K is known from the first output
                acc = torch.zeros(probs.shape[1], th, w, device=device)
            for p, x in zip(probs, cols, strict=True):
                acc[:, :, x : x + tw] += p * weight
                wsum[:, x : x + tw] += weight
        assert acc is not None
        # Rows above the next band get no more contributions: reduce them and shift them out.
        done = (ys[i + 1] if i + 1 < len(ys) else h) - y
        conf, classes = (acc[:, :done] / wsum[:done]).max(dim=0)  # (done, W) each
        mask[y : y + done] = classes.to(torch.uint8).cpu().numpy()
        confidence[y : y + done] = conf.cpu().numpy()
        acc = acc.roll(-done, dims=1)
        acc[:, th - done :] = 0
        wsum = wsum.roll(-done, dims=0)
        wsum[th - done :] = 0
    return Prediction(mask=mask, confidence=confidence, tiled=True)


def _normalized(model: nn.Module, images: np.ndarray, preprocess: PreprocessConfig) -> torch.Tensor:
    """(B, H, W, C) uint8 -> (B, C, H, W) float32 normalised on the model's device: the bytes
    travel, not 4x as many floats."""
    return normalize_batch(to_device(_host_tensor(images), _model_device(model)), preprocess)


def _host_tensor(array: np.ndarray) -> torch.Tensor:
    """A CPU tensor of ``array``'s pixels; a contiguous view where it can, else a copy (also of a
    read-only array, as ``np.asarray(pil_image)`` gives, which torch will not wrap). 16-bit
    pixels travel as int32 (exact; torch has few uint16 kernels on CUDA)."""
    array = np.ascontiguousarray(array.astype(np.int32) if array.dtype == np.uint16 else array)
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def _on_device(model: nn.Module, device: torch.device | str | None) -> nn.Module:
    return model if device is None else model.to(torch.device(device))


@torch.inference_mode()
def predict(
    model: nn.Module,
    image: np.ndarray | Image.Image,
    *,
    preprocess: PreprocessConfig,
    tta: bool | str = False,
    tile_size: int | None = 512,
    tile_overlap: float = 64,
    device: torch.device | str | None = None,
    amp: bool | None = None,
    tile_batch: int = 4,
) -> Prediction:
    """Class mask and confidence for one image (PIL, or uint8 HxW / HxWxC array) of any size.

    Args:
        preprocess: channels and normalisation the model was trained with; the image is
            converted to ``preprocess.channels`` (RGB -> luminance, grayscale -> replicated).
        tta: test-time augmentation (`unet_core.tta`): False / "none", True / "flip" (mean
            softmax over identity and both mirrors, 3x the compute) or "dihedral" (the 8
            rotations and mirrors, 8x).
        tile_size: images larger than this on either side are predicted in overlapping tiles
            (memory bound in the module docstring); None or 0 predicts the whole image at once.
        tile_overlap: overlap of neighbouring tiles in pixels, or a fraction of tile_size in (0, 1);
            tiles are blended with linear ramps over the overlap.
        device: where to run; the model is moved there (in place). None: where the model is.
        amp: mixed precision (`unet_core.precision.autocast_dtype`); None chooses it on CUDA
            and on CPUs with native bf16.
        tile_batch: tiles per forward pass, of one band of tile rows (a job passes its batch
            size). Float32 convolutions of different batch sizes may round apart in the last
            bit, so results are bit-identical for equal ``tile_batch``.

    The model runs in eval mode (its previous mode is restored). Prepare it once with
    `prepare_for_inference` (folded BatchNorm, channels-last weights): that is what the batch
    job (jobs/inference) predicts with, so ``predict`` with a prepared model gives the job's
    masks bit for bit, and an unprepared one only to float tolerance.
    """
    mode = resolve_tta(tta)
    arr = model_input(image, preprocess)
    model = _on_device(model, device)
    return _predict_array(
        model,
        arr,
        preprocess=preprocess,
        tta=mode,
        tile_size=tile_size,
        tile_overlap=tile_overlap,
        amp=amp,
        tile_batch=tile_batch,
    )


def _predict_array(
    model: nn.Module,
    arr: np.ndarray,
    *,
    preprocess: PreprocessConfig,
    tta: str,
    tile_size: int | None,
    tile_overlap: float,
    amp: bool | None,
    tile_batch: int,
) -> Prediction:
    h, w = arr.shape[:2]
    if needs_tiles(h, w, tile_size):
        assert tile_size is not None
        with _eval_mode(model):
            return _predict_tiled(
                model,
                arr,
                preprocess=preprocess,
                tile_size=tile_size,
                overlap=_overlap_pixels(tile_size, tile_overlap),
                tta=tta,
                amp=amp,
                tile_batch=max(1, tile_batch),
            )
    classes, conf = predict_tensor(
        model, _normalized(model, arr[None], preprocess), tta=tta, amp=amp
    )
    return Prediction(mask=classes[0].cpu().numpy(), confidence=conf[0].cpu().numpy())


@torch.inference_mode()
def predict_batch(
    model: nn.Module,
    images: Sequence[np.ndarray | Image.Image],
    *,
    preprocess: PreprocessConfig,
    tta: bool | str = False,
    tile_size: int | None = 512,
    tile_overlap: float = 64,
    device: torch.device | str | None = None,
    amp: bool | None = None,
    tile_batch: int = 4,
) -> list[Prediction]:
    """Predictions for equal-size images in one forward pass (arguments as in `predict`).

    Images larger than ``tile_size`` are tiled one by one, exactly as `predict` does, so
    ``predict_batch(model, [im])[0]`` always equals ``predict(model, im)``.
    """
    mode = resolve_tta(tta)
    if not images:
        return []
    arrays = [model_input(im, preprocess) for im in images]
    sizes = sorted({a.shape[:2] for a in arrays})
    if len(sizes) > 1:
        raise ValueError(
            f"predict_batch needs equal-size images, got sizes (H, W) {sizes}; group images "
            "by size or call predict per image"
        )
    model = _on_device(model, device)
    h, w = sizes[0]
    if needs_tiles(h, w, tile_size):
        return [
            _predict_array(
                model,
                a,
                preprocess=preprocess,
                tta=mode,
                tile_size=tile_size,
                tile_overlap=tile_overlap,
                amp=amp,
                tile_batch=tile_batch,
            )
            for a in arrays
        ]
    x = _normalized(model, np.stack(arrays), preprocess)  # (B, C, H, W)
    classes, conf = predict_tensor(model, x, tta=mode, amp=amp)
    classes_np, conf_np = classes.cpu().numpy(), conf.cpu().numpy()
    return [Prediction(mask=m, confidence=c) for m, c in zip(classes_np, conf_np, strict=True)]
