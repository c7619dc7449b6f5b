"""The measured step time of candidate model sizes: a few forward and backward steps (the
training loss, AdamW, the training's autocast) in one Ray task that asks for the resources a
training worker gets, so that on a cluster it runs on the node type training will use.

On CPU the steps run at a crop of at most `CPU_MEASURE_CROP` and are scaled by pixels (CPU time
per pixel barely depends on the crop), so the whole measurement takes a few seconds; on GPU they
run at the planned crop. Each candidate's time is the median of its steps after one warm-up.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

logger = logging.getLogger(__name__)

CPU_MEASURE_CROP = 128
"""Largest crop timed on CPU (then scaled by pixels)."""
SECONDS_PER_CANDIDATE = {"cpu": 1.5, "gpu": 5.0}
"""Time spent on one candidate's steps after its warm-up (at least MIN_STEPS steps)."""
MIN_STEPS, MAX_STEPS = 2, 20
"""Steps timed per candidate."""


@dataclass(frozen=True)
class Candidate:
    """One model size to time."""

    base_width: int
    """Channels of the first block."""
    depth: int
    """Poolings."""
    crop_size: int
    """Side of the crops (square)."""
    batch_size: int
    """Crops per step."""
    in_channels: int
    """Image channels."""
    num_classes: int
    """Output classes."""
    norm: str = "batch"
    """Normalisation of the blocks."""


def time_candidates(
    candidates: list[dict[str, Any]], device: str, amp: str = "auto"
) -> dict[str, Any]:
    """Seconds per training step of each candidate on this process's device (cuda for gpu),
    and the device's memory in GB (None on CPU). Runs inside the Ray task."""
    import torch

    from unet_core.losses import SegmentationLoss
    from unet_core.model import UNet
    from unet_core.precision import autocast_dtype

    dev = torch.device("cuda" if device == "gpu" else "cpu")
    dtype = autocast_dtype(dev, {"auto": None, "bf16": True, "off": False}[amp], training=True)
    memory = (
        torch.cuda.get_device_properties(dev).total_memory / 1e9 if dev.type == "cuda" else None
    )
    out = []
    for c in (Candidate(**c) for c in candidates):
        crop = c.crop_size if dev.type == "cuda" else min(c.crop_size, CPU_MEASURE_CROP)
        torch.manual_seed(0)
        model = UNet(
            c.in_channels, c.num_classes, base_width=c.base_width, depth=c.depth, norm=c.norm
        ).to(dev, memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        loss_fn = SegmentationLoss(c.num_classes)
        x = torch.randn(c.batch_size, c.in_channels, crop, crop, device=dev)  # (B, C, H, W)
        x = x.to(memory_format=torch.channels_last)
        y = torch.randint(0, c.num_classes, (c.batch_size, crop, crop), device=dev)  # (B, H, W)
        try:
            seconds = _median_step(model, optimizer, loss_fn, x, y, dev, dtype, device)
        except torch.cuda.OutOfMemoryError:  # this size does not fit: no candidate
            seconds = float("inf")
        out.append(seconds * (c.crop_size / crop) ** 2)  # CPU: time per pixel is flat in the crop
        del model, optimizer, x, y
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return {"seconds": out, "gpu_memory_gb": memory}


def _median_step(model, optimizer, loss_fn, x, y, dev, dtype, device: str) -> float:
    """Median seconds of the training steps after one warm-up step."""
    import torch

    from unet_core.precision import autocast

    times: list[float] = []
    spent, step = 0.0, 0
    while step <= MIN_STEPS or (spent < SECONDS_PER_CANDIDATE[device] and step <= MAX_STEPS):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast(dev, dtype):
            loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        elapsed = time.perf_counter() - start
        if step:  # the first step is the warm-up (allocation, cuDNN autotuning)
            times.append(elapsed)
            spent += elapsed
        step += 1
    return statistics.median(times)


def measure(
    candidates: list[Candidate],
    *,
    device: str,
    cpus_per_worker: float,
    gpus_per_worker: float = 1.0,
    amp: str = "auto",
) -> dict[str, Any]:
    """`time_candidates` in one Ray task with a training worker's resources (Ray connected)."""
    import ray

    resources: dict[str, Any] = {"num_cpus": cpus_per_worker}
    if device == "gpu":
        resources["num_gpus"] = gpus_per_worker
    task = ray.remote(**resources)(time_candidates)
    started = time.monotonic()
    result = ray.get(task.remote([asdict(c) for c in candidates], device, amp))
    logger.info(
        "timed %d candidate(s) on %s in %.1f s: %s s per step",
        len(candidates),
        device,
        time.monotonic() - started,
        ", ".join(f"{s:.3g}" for s in result["seconds"]),
    )
    return result
