"""The check of an exported file: its output against the PyTorch model's on the same images.

Inputs are random images (uint8, or for a clip_zscore model values spread over its clip range)
at a few sizes, odd ones and 1 x 1 among them (the graph pads inside), the first with batch 2
and the others with batch 1, so the dynamic batch, height and width are all exercised. The
reference is the model's own forward in fp32 on the images normalised with the checkpoint's
preprocess (`unet_core.transforms.normalize_batch`, what training and `unet_core.predict`
use; eval mode, BatchNorm not folded: the exported graph holds the same operations, so the two
agree to float rounding), and the masks of `unet_core.predict_batch` (fp32, untiled).

The ``logits`` graph's difference is the largest absolute logit difference. The
``uint8-mask`` graph gives no logits: its difference is the largest margin, in PyTorch's
logits, between PyTorch's class and the file's at a pixel where they differ (0 when every pixel
agrees; None when the file gives a value that is no class's), so one tolerance means the same
for both: the file departs from PyTorch only where logits within the tolerance tie.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from jobs.exporting.formats import Runner
from unet_core.config import PreprocessConfig
from unet_core.predict import predict_batch
from unet_core.transforms import normalize_batch

SEED = 0


def random_images(
    rng: np.random.Generator, batch: int, size: tuple[int, int], preprocess: PreprocessConfig
) -> np.ndarray:
    """(B, H, W, C) random images: uint8, or for a clip_zscore model values spread a little
    past both ends of its clip range (float32), so the clip is exercised too."""
    h, w = size
    shape = (batch, h, w, preprocess.channels)
    bounds = preprocess.clip_bounds()
    if bounds is None:
        return rng.integers(0, 256, shape, dtype=np.uint8)
    low, high = bounds
    span = np.maximum(high - low, 1e-3)
    return rng.uniform(low - 0.1 * span, high + 0.1 * span, shape).astype(np.float32)


def normalised(images: np.ndarray, preprocess: PreprocessConfig) -> torch.Tensor:
    """(B, H, W, C) -> (B, C, H, W) float32 normalised, contiguous."""
    return normalize_batch(torch.from_numpy(images), preprocess).contiguous()


def sample_input(preprocess: PreprocessConfig, multiple: int, graph: str) -> torch.Tensor:
    """The example input of `torch.export`: batch 2, (2m + 3) x (3m + 1): odd sides that need
    padding, none of 1 (the graph holds for every size; see `formats.export_program`)."""
    images = random_images(
        np.random.default_rng(SEED), 2, (2 * multiple + 3, 3 * multiple + 1), preprocess
    )
    return torch.from_numpy(images) if graph == "uint8-mask" else normalised(images, preprocess)


def _mask_margin(logits: np.ndarray, classes: np.ndarray, values: list[int]) -> float | None:
    """The largest logit margin between PyTorch's argmax and the class of the file's value
    ``classes`` (B, H, W) at pixels where they differ; None when a value is no class's."""
    lookup = {v: i for i, v in enumerate(values)}
    if not set(np.unique(classes).tolist()) <= set(lookup):
        return None
    index = (
        np.vectorize(lookup.__getitem__, otypes=[np.int64])(classes) if classes.size else classes
    )
    chosen = np.take_along_axis(logits, index[:, None].astype(np.int64), axis=1)[:, 0]
    margin = logits.max(axis=1) - chosen  # (B, H, W), 0 where the file agrees
    return float(margin.max()) if margin.size else 0.0


def check_export(
    run: Runner,
    model: torch.nn.Module,
    preprocess: PreprocessConfig,
    sizes: list[tuple[int, int]],
    *,
    graph: str = "logits",
    class_values: list[int] | None = None,
) -> list[dict[str, Any]]:
    """One record per size: input shape, the difference of the module docstring
    (``max_abs_diff``; None when not finite or not a class value) and the fraction of pixels
    whose class is `predict_batch`'s."""
    rng = np.random.default_rng(SEED + 1)
    model = model.eval()
    values = np.asarray(class_values if class_values is not None else [], np.int64)
    checks = []
    for i, size in enumerate(sizes):
        images = random_images(rng, 2 if i == 0 else 1, size, preprocess)
        x = normalised(images, preprocess)
        with torch.no_grad():
            expected = model(x).float().numpy()  # (B, K, H, W)
        masks = predict_batch(model, list(images), preprocess=preprocess, tile_size=None, amp=False)
        reference = np.stack([p.mask for p in masks])  # (B, H, W) class indices
        if graph == "uint8-mask":
            given = images
            want = (x.shape[0], *x.shape[2:])
        else:
            given, want = x.numpy(), expected.shape
        got = np.asarray(run(given))
        if got.shape != tuple(want):
            raise ValueError(
                f"the exported model gave an output of shape {got.shape} for an input of shape "
                f"{tuple(given.shape)}; PyTorch gives {tuple(want)}"
            )
        if graph == "uint8-mask":
            diff = _mask_margin(expected, got, values.tolist())
            agreement = float((got == values[reference]).mean())
        else:
            delta = np.abs(got.astype(np.float64) - expected)
            # None: the file gave NaN or inf where PyTorch did not (or both did)
            diff = float(delta.max()) if np.isfinite(delta).all() else None
            agreement = float((got.argmax(axis=1) == reference).mean())
        checks.append(
            {"shape": list(given.shape), "max_abs_diff": diff, "mask_agreement": agreement}
        )
    return checks
