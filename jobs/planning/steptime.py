"""The measured step time of candidate model sizes: a few forward and backward steps (the
training loss, AdamW, the training's autocast) in one Ray task that asks for the resources a
training worker gets, so that on a cluster it runs on the node type training will use.

The steps run at the planned crop and batch, on CPU too: time per pixel is not flat in the crop
(a depth-5 UNet timed at 128 px and scaled to 256 px came out 55% slower than timed at 256 px,
its deep levels a few pixels wide). Each candidate's time is the median of its steps after one
warm-up, times `TRAINING_OVERHEAD` for what a timing task does not do.

A training step also waits for its batch: the planned augmentation (warps, elastic deformation),
the border weight maps and the collation of `batch_size` crops, made from an image of the data's
median size, channels and pixel type. On CPU the batch is made on the worker's own CPUs while
the model trains on them (they add up); on GPU it overlaps the step (the slower one sets the
pace). Workers that share a node share its cores and memory bandwidth, so on CPU as many timing
tasks run at once as training workers fit on one node, and the slowest sets the step time (a
DDP step waits for its slowest worker).
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

logger = logging.getLogger(__name__)

TRAINING_OVERHEAD = 1.15
"""Real training step / timed step: the DDP gradient all-reduce, the Ray Data feed and the loop
around the step. Measured on 2 CPU workers sharing a node (docs/planning.md): 0.43 / 0.37 s for
a width-16 depth-4 UNet at 256 px, about 1.05 / 0.91 s for width 24 depth 5."""
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


@dataclass(frozen=True)
class DataSample:
    """What the training crops are made from, for timing the data pipeline."""

    height: int
    """Image height (the data set's median)."""
    width: int
    """Image width (the data set's median)."""
    channels: int
    """Image channels."""
    dtype: str
    """NumPy pixel type of the decoded images (uint8, uint16, float32)."""
    num_classes: int
    """Classes of the masks."""
    train: dict[str, Any]
    """TrainConfig fields of the planned augmentation and border weights."""


def time_candidates(
    candidates: list[dict[str, Any]],
    device: str,
    amp: str = "auto",
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Seconds per training step of each candidate on this process's device (cuda for gpu),
    with the time to make its batch from ``data`` (a `DataSample`; None: the model alone), and
    the device's memory in GB (None on CPU). Runs inside the Ray task."""
    import torch

    from unet_core.losses import SegmentationLoss
    from unet_core.model import UNet
    from unet_core.precision import autocast_dtype

    dev = torch.device("cuda" if device == "gpu" else "cpu")
    dtype = autocast_dtype(dev, {"auto": None, "bf16": True, "off": False}[amp], training=True)
    memory = (
        torch.cuda.get_device_properties(dev).total_memory / 1e9 if dev.type == "cuda" else None
    )
    out, batch_seconds = [], {}
    for c in (Candidate(**c) for c in candidates):
        if data is not None and (c.crop_size, c.batch_size) not in batch_seconds:
            batch_seconds[c.crop_size, c.batch_size] = time_batches(
                DataSample(**data), crop=c.crop_size, batch=c.batch_size
            )
        torch.manual_seed(0)
        model = UNet(
            c.in_channels, c.num_classes, base_width=c.base_width, depth=c.depth, norm=c.norm
        ).to(dev, memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        loss_fn = SegmentationLoss(c.num_classes)
        side = c.crop_size
        x = torch.randn(c.batch_size, c.in_channels, side, side, device=dev)  # (B, C, H, W)
        x = x.to(memory_format=torch.channels_last)
        y = torch.randint(0, c.num_classes, (c.batch_size, side, side), device=dev)  # (B, H, W)
        try:
            seconds = _median_step(model, optimizer, loss_fn, x, y, dev, dtype, device)
        except torch.cuda.OutOfMemoryError:  # this size does not fit: no candidate
            seconds = float("inf")
        seconds *= TRAINING_OVERHEAD
        making = batch_seconds.get((c.crop_size, c.batch_size), 0.0)
        out.append(seconds + making if dev.type == "cpu" else max(seconds, making))
        del model, optimizer, x, y
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return {"seconds": out, "gpu_memory_gb": memory, "batch_seconds": list(batch_seconds.values())}


def time_batches(sample: DataSample, *, crop: int, batch: int) -> float:
    """Median seconds to make one training batch of `batch` crops of `crop` px from an image
    like the data's: the planned augmentation, border weight maps and collation (what
    `jobs.training.batches.TrainCollate` does), after one warm-up batch."""
    import numpy as np

    from jobs.training.batches import TrainCollate, border_weights
    from unet_core.config import PreprocessConfig, TrainConfig
    from unet_core.transforms import transforms_for_training

    cfg = TrainConfig.from_dict({**sample.train, "crop_size": crop, "batch_size": batch})
    rgb = sample.channels == 3
    collate = TrainCollate(
        transforms_for_training(cfg, rgb=rgb),
        PreprocessConfig(
            channels=sample.channels,
            mean=(0.5,) * sample.channels,
            std=(0.25,) * sample.channels,
            scheme="scale_zscore" if sample.dtype == "uint8" else "clip_zscore",
            clip_low=(0.0,) * sample.channels,
            clip_high=(1.0,) * sample.channels,
        ),
        seed=0,
        epoch=0,
        weights=border_weights(cfg, sample.num_classes),
    )
    rng = np.random.default_rng(0)
    shape = (sample.height, sample.width, sample.channels)
    if np.dtype(sample.dtype).kind == "f":
        image = rng.random(shape, dtype=np.float32)
    else:
        image = rng.integers(0, np.iinfo(sample.dtype).max, shape, dtype=sample.dtype)
    # objects of about 24 px: blocks of a coarse random label grid, as many touching as not
    cells = rng.integers(0, sample.num_classes, (sample.height // 24 + 1, sample.width // 24 + 1))
    mask = np.kron(cells, np.ones((24, 24), dtype=np.int64))[: sample.height, : sample.width]
    mask = mask.astype(np.uint8)
    times: list[float] = []
    spent, step = 0.0, 0
    while step <= MIN_STEPS or (spent < SECONDS_PER_CANDIDATE["cpu"] and step <= MAX_STEPS):
        start = time.perf_counter()
        collate.collate([collate.augment(f"timing-{step}-{i}", image, mask) for i in range(batch)])
        elapsed = time.perf_counter() - start
        if step:
            times.append(elapsed)
            spent += elapsed
        step += 1
    return statistics.median(times)


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


def sharing_workers(num_workers: int, cpus_per_worker: float) -> int:
    """Training workers that share one node's CPUs: at most `num_workers`, at most what the
    largest alive node holds (Ray connected)."""
    import ray

    node_cpus = [n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")]
    fits = int(max(node_cpus, default=0.0) // max(cpus_per_worker, 1e-9))
    return max(1, min(num_workers, fits))


def measure(
    candidates: list[Candidate],
    *,
    device: str,
    cpus_per_worker: float,
    gpus_per_worker: float = 1.0,
    amp: str = "auto",
    data: DataSample | None = None,
    num_workers: int = 1,
) -> dict[str, Any]:
    """`time_candidates` in Ray tasks with a training worker's resources (Ray connected): on CPU
    as many at once as training workers share a node (`sharing_workers`), the slowest kept."""
    import ray

    resources: dict[str, Any] = {"num_cpus": cpus_per_worker}
    if device == "gpu":
        resources["num_gpus"] = gpus_per_worker
    tasks = sharing_workers(num_workers, cpus_per_worker) if device == "cpu" else 1
    task = ray.remote(**resources)(time_candidates)
    started = time.monotonic()
    payload = [asdict(c) for c in candidates]
    sample = asdict(data) if data is not None else None
    results = ray.get([task.remote(payload, device, amp, sample) for _ in range(tasks)])
    result = dict(results[0])
    result["seconds"] = [max(r["seconds"][i] for r in results) for i in range(len(candidates))]
    result["tasks"] = tasks
    logger.info(
        "timed %d candidate(s) on %s in %.1f s (%d task(s) at once): %s s per step, of which "
        "making the batch %s s",
        len(candidates),
        device,
        time.monotonic() - started,
        tasks,
        ", ".join(f"{s:.3g}" for s in result["seconds"]),
        ", ".join(f"{s:.3g}" for s in result["batch_seconds"]) or "0",
    )
    return result
