"""The size rules of a plan: crop, depth, batch, width, epochs and crops from the fingerprint,
the resources and the measured step time. Each rule returns its value with the one line that
says why (the numbers it came from); `jobs.planning.plan` assembles them.

Every constant below is a principle with its source, not a value fitted to one data set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from jobs.planning.fingerprint import Fingerprint

BOTTLENECK_MIN_PX = 8
"""The deepest level keeps at least this many pixels per side of the crop (nnU-Net pools an
axis while it is at least 8 px)."""
MIN_DEPTH = 3
"""Fewest poolings: below this a UNet sees too little context to tell classes apart."""
CONTEXT = 2.0
"""The receptive field spans the typical object and as much again around it (its
neighbourhood tells it from similar-looking things): CONTEXT x its side."""
CROP_CAP_CPU = 256
"""Largest crop on CPU: there time, not memory, is the limit; pixels per second barely depend
on the crop, so a larger crop buys context with fewer, more correlated crops, and 256 px already
holds a depth-4 receptive field (199 px)."""
CROP_CAP_GPU = 1024
"""Largest crop on GPU (then memory decides: `MEMORY_BYTES_PER_PX_CHANNEL`)."""
GPU_MEMORY_USABLE = 0.6
"""Share of a GPU's memory the activations may take (weights, AdamW state, cuDNN workspace
and the allocator's slack take the rest)."""
MEMORY_BYTES_PER_PX_CHANNEL = 48
"""Activation bytes kept for the backward pass per crop pixel and base-width channel: about 12
bf16 tensors per level (convs, norms, ReLUs, the skip), encoder and decoder, the halving pixels
and doubling channels of deeper levels adding up to about 2x the first level."""
DEFAULT_GPU_MEMORY_GB = 16.0
"""GPU memory assumed when it is neither given nor measured (the smallest common training
GPUs: T4, V100-16GB)."""
CPU_BATCH = 4
"""Per-worker batch on CPU: the smallest whose BatchNorm statistics are steady; CPU throughput
does not grow with the batch, so a larger one only takes optimizer steps away."""
MIN_BATCH, MAX_BATCH = 2, 32
"""Per-worker batch bounds (nnU-Net: at least 2; huge 2D batches waste a budget: nnUNet#1811)."""
BATCH_DATA_SHARE = 0.05
"""One global batch covers at most this share of the data set's pixels (nnU-Net's rule)."""
WIDTHS = {"cpu": (16, 24, 32), "gpu": (32, 48, 64)}
"""Base-width candidates by device, narrowest first (nnU-Net's 2D base is 32)."""
FEATURES_PER_CLASS = 2
"""The base width is at least this many features per class: the head is a 1x1 convolution of
the last decoder level (base_width channels), which must tell all the classes apart at full
resolution; 11 road-scene classes get no fewer than 22 features, a binary task any width."""
MIN_STEPS = 2000
"""A UNet trained from scratch needs on the order of a few thousand optimizer steps; the plan
takes the widest candidate that still makes this many in the budget."""
STARTUP_SECONDS = 60.0
"""Fixed cost of a run outside its training steps: workers, data checks, registration."""
EPOCH_SECONDS = 3.0
"""Fixed cost of an epoch besides validation: checkpoint, report, MLflow."""
EPOCH_OVERHEAD_SHARE = 0.1
"""Validation and checkpoints take at most this share of the training time: it sets how many
epochs (checkpoints to pick the best from) the budget affords."""
MIN_EPOCHS, MAX_EPOCHS = 2, 100
"""Epoch bounds: at least two to pick a best; more than 100 checkpoints tell nothing new."""
FORWARD_SHARE = 1 / 3
"""A forward pass costs about a third of a training step (forward and backward)."""
SAMPLED_SET_LIMIT_BYTES = 4 * 2**30
"""Crops drawn with replacement keep the decoded training set on every worker: above this,
epochs are passes (jobs.training.trainer.SAMPLED_SET_LIMIT_GIB)."""
STEP_BUCKETS_PER_DOUBLING = 4
"""Measured step times are rounded to 2 ** (k / 4) s (about +-9%), so timing noise does not
change the plan."""


@dataclass(frozen=True)
class Resources:
    """What the training will get (docs/flags.md vocabulary)."""

    device: str
    """cpu or gpu (auto is resolved before planning)."""
    num_workers: int
    """Training workers (the largest of a MIN-MAX range)."""
    cpus_per_worker: float = 1.0
    """Logical CPUs per worker (the measurement task asks for the same)."""
    gpus_per_worker: float = 1.0
    """GPUs per worker on gpu."""
    gpu_memory_gb: float | None = None
    """Memory of one GPU (GB); None: measured, else DEFAULT_GPU_MEMORY_GB."""

    def usable_bytes(self) -> float:
        gb = self.gpu_memory_gb or DEFAULT_GPU_MEMORY_GB
        return gb * 1e9 * min(1.0, self.gpus_per_worker) * GPU_MEMORY_USABLE


@dataclass(frozen=True)
class Choice:
    """One planned value and why."""

    value: Any
    """The setting."""
    why: str
    """One line: the numbers it came from."""


def bucket(seconds: float) -> float:
    """``seconds`` rounded to the nearest 2 ** (k / STEP_BUCKETS_PER_DOUBLING); inf (a size
    that did not fit) stays inf."""
    if not math.isfinite(seconds):
        return math.inf
    k = round(STEP_BUCKETS_PER_DOUBLING * math.log2(max(seconds, 1e-6)))
    return float(f"{2 ** (k / STEP_BUCKETS_PER_DOUBLING):.4g}")


def receptive_field(depth: int) -> int:
    """Receptive field (px) of a UNet of ``depth`` poolings, two 3x3 convs per level."""
    return 13 * 2**depth - 9


def data_pixels(fp: Fingerprint) -> float:
    return fp.pairs * (fp.sizes.median_height or 0) * (fp.sizes.median_width or 0)


def object_extent(fp: Fingerprint) -> float | None:
    """Typical object side (px): per class the side of its large objects (sqrt of the 95th
    percentile area: they hold most of its pixels, where specks and fragments dominate the
    median), and of those the median weighted by the classes' pixel fractions."""
    sides = sorted(
        (math.sqrt(c.area_p95), c.pixel_fraction)
        for c in fp.classes
        if c.area_p95 and c.pixel_fraction
    )
    total, seen = sum(f for _, f in sides), 0.0
    for side, fraction in sides:
        seen += fraction
        if seen >= total / 2:
            return side
    return None


def geometry(fp: Fingerprint, res: Resources) -> tuple[Choice, Choice]:
    """(crop_size, depth): the crop from the median image side, capped by the device; the depth
    the receptive field needs for the typical object, capped so the bottleneck keeps
    BOTTLENECK_MIN_PX."""
    side = int(min(fp.sizes.median_height or 64, fp.sizes.median_width or 64))
    if res.device == "gpu":  # the largest crop at which the widest candidate fits 4 per GPU
        fits = math.sqrt(res.usable_bytes() / (MEMORY_BYTES_PER_PX_CHANNEL * WIDTHS["gpu"][-1] * 4))
        cap = max(128, min(CROP_CAP_GPU, int(fits) // 64 * 64))
        cap_why = f"GPU cap {cap} (4 crops at width {WIDTHS['gpu'][-1]} in {res.usable_bytes() / 1e9:.1f} GB)"
    else:
        cap, cap_why = CROP_CAP_CPU, f"CPU cap {CROP_CAP_CPU} (time, not memory, limits)"
    raw = min(side, cap)
    deepest = max(1, int(math.log2(max(raw, 2) / BOTTLENECK_MIN_PX)))
    extent = object_extent(fp)
    need = MIN_DEPTH
    while extent and receptive_field(need) < min(CONTEXT * extent, raw) and need < deepest:
        need += 1
    depth = max(1, min(need, deepest))
    crop = max(2**depth, raw // 2**depth * 2**depth)
    extent_text = f"{extent:.0f} px" if extent else "unknown"
    return (
        Choice(crop, f"median image side {side}, {cap_why}, a multiple of 2^{depth}"),
        Choice(
            depth,
            f"receptive field {receptive_field(depth)} px vs {CONTEXT:g} x the typical object "
            f"side {extent_text}; bottleneck {crop // 2**depth} px >= {BOTTLENECK_MIN_PX}",
        ),
    )


def batch_for(fp: Fingerprint, res: Resources, *, width: int, crop: int) -> Choice:
    """Per-worker batch: CPU_BATCH on CPU, else what the GPU memory holds; never a global batch
    above BATCH_DATA_SHARE of the data's pixels, never below MIN_BATCH."""
    share = BATCH_DATA_SHARE * data_pixels(fp) / (crop * crop * res.num_workers)
    if res.device == "gpu":
        fits = res.usable_bytes() / (MEMORY_BYTES_PER_PX_CHANNEL * width * crop * crop)
        device_batch, device_why = int(fits), f"{fits:.0f} crops fit the GPU"
    else:
        device_batch, device_why = CPU_BATCH, f"CPU batch {CPU_BATCH}"
    # the data-share cap curbs huge batches; it never takes one below the BatchNorm floor
    floor = max(MIN_BATCH, min(CPU_BATCH, device_batch))
    batch = max(floor, min(MAX_BATCH, device_batch, int(share)))
    return Choice(
        batch,
        f"{device_why}; 5% of the data's pixels is {share:.1f} crops per worker, "
        f"not below {floor}; at most {MAX_BATCH}",
    )


@dataclass(frozen=True)
class Schedule:
    """What a step time affords in the budget."""

    epochs: int
    samples_per_epoch: int
    """0: every training image once per epoch (sets too large to sample)."""
    crops: int
    """Training crops in the whole run."""
    steps: int
    """Optimizer steps in the whole run."""
    epoch_seconds: float
    """Validation and fixed cost of one epoch (estimated)."""
    train_seconds: float
    """Budget left for training steps and epochs."""


def schedule(
    fp: Fingerprint,
    res: Resources,
    *,
    budget_minutes: float,
    step_seconds: float,
    batch: int,
    crop: int,
    val_fraction: float,
) -> Schedule:
    """Epochs and crops per epoch that fill the budget at ``step_seconds`` per step."""
    budget = budget_minutes * 60.0
    train_s = max(0.25 * budget, budget - STARTUP_SECONDS)
    global_batch = batch * res.num_workers
    px_per_s = global_batch * crop * crop / step_seconds
    val_px = max(1, round(val_fraction * fp.pairs)) * data_pixels(fp) / max(1, fp.pairs)
    epoch_s = EPOCH_SECONDS + val_px / (px_per_s / FORWARD_SHARE)
    epochs = int(EPOCH_OVERHEAD_SHARE * train_s / epoch_s)
    epochs = max(MIN_EPOCHS, min(MAX_EPOCHS, epochs))
    steps = max(epochs, int((train_s - epochs * epoch_s) / step_seconds))
    channels = fp.intensity.channels if fp.intensity else 3
    train_pairs = max(1, fp.pairs - round(val_fraction * fp.pairs))
    decoded = train_pairs * data_pixels(fp) / max(1, fp.pairs) * (channels + 1)
    if decoded > SAMPLED_SET_LIMIT_BYTES:
        passes = max(1, steps * global_batch // train_pairs)
        return Schedule(
            passes, 0, passes * train_pairs, steps, epoch_s, train_s
        )  # passes: each image once per epoch
    per_epoch = max(1, steps // epochs) * global_batch
    return Schedule(epochs, per_epoch, per_epoch * epochs, steps, epoch_s, train_s)
