"""The check of an exported file: its logits against the PyTorch model's on the same input.

Inputs are random uint8 images normalised with the checkpoint's preprocess
(`unet_core.transforms.normalize_batch`, what training and `unet_core.predict` use), one size
with batch 2 and the others with batch 1, so the dynamic batch, height and width are all
exercised. The reference is the model's own forward in fp32 (eval mode, BatchNorm not folded:
the exported graph holds the same operations, so the two agree to float rounding); the masks
of `unet_core.predict_batch` (fp32, untiled) are compared with the file's argmax as well.
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


def normalised_images(
    rng: np.random.Generator, batch: int, size: tuple[int, int], preprocess: PreprocessConfig
) -> tuple[np.ndarray, torch.Tensor]:
    """(B, H, W, C) random images and their (B, C, H, W) float32 normalised form: uint8, or
    for a clip_zscore model values spread over its clip range (float32)."""
    h, w = size
    shape = (batch, h, w, preprocess.channels)
    bounds = preprocess.clip_bounds()
    if bounds is None:
        images = rng.integers(0, 256, shape, dtype=np.uint8)
    else:  # a little past both ends, so the clip is exercised too
        low, high = bounds
        span = np.maximum(high - low, 1e-3)
        images = rng.uniform(low - 0.1 * span, high + 0.1 * span, shape).astype(np.float32)
    x = normalize_batch(torch.from_numpy(images), preprocess).contiguous()  # (B, C, H, W)
    return images, x


def sample_input(preprocess: PreprocessConfig, multiple: int) -> torch.Tensor:
    """The example input of `torch.export`: batch 2, 2m x 3m (no side of 1 block, which
    torch.export would specialise)."""
    return normalised_images(
        np.random.default_rng(SEED), 2, (2 * multiple, 3 * multiple), preprocess
    )[1]


def check_export(
    run: Runner,
    model: torch.nn.Module,
    preprocess: PreprocessConfig,
    sizes: list[tuple[int, int]],
) -> list[dict[str, Any]]:
    """One record per size: input shape, max abs logit difference (None when not finite) and
    the fraction of pixels whose argmax is `predict_batch`'s class."""
    rng = np.random.default_rng(SEED + 1)
    model = model.eval()
    checks = []
    for i, size in enumerate(sizes):
        images, x = normalised_images(rng, 2 if i == 0 else 1, size, preprocess)
        with torch.no_grad():
            expected = model(x).float().numpy()  # (B, K, H, W)
        got = np.asarray(run(x.numpy()))
        if got.shape != expected.shape:
            raise ValueError(
                f"the exported model gave logits of shape {got.shape} for an input of shape "
                f"{tuple(x.shape)}; PyTorch gives {expected.shape}"
            )
        masks = predict_batch(model, list(images), preprocess=preprocess, tile_size=None, amp=False)
        reference = np.stack([p.mask for p in masks])  # (B, H, W) uint8
        diff = np.abs(got.astype(np.float64) - expected)
        checks.append(
            {
                "shape": list(x.shape),
                # None: the file gave NaN or inf where PyTorch did not (or both did)
                "max_abs_diff": float(diff.max()) if np.isfinite(diff).all() else None,
                "mask_agreement": float((got.argmax(axis=1) == reference).mean()),
            }
        )
    return checks
