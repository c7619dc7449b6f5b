"""Plan a data set for a budget: the resources training will get (the flags, the rest decided as
training decides them), the step time of the candidate sizes (measured in a Ray task, or given),
and the plan. Ray must be connected (`jobs.common.ray_cluster.connect_ray`)."""

from __future__ import annotations

import logging

from jobs.planning.fingerprint import Fingerprint
from jobs.planning.plan import (
    Plan,
    augmentation,
    balance,
    candidates,
    in_channels,
    make_plan,
    scaled_step_seconds,
)
from jobs.planning.rules import Resources, bucket
from jobs.planning.steptime import DataSample, measure

logger = logging.getLogger(__name__)


def training_resources(
    *,
    device_request: bool | None,
    num_workers: int,
    cpus_per_worker: float | None,
    gpus_per_worker: float,
    gpu_memory_gb: float | None,
    ray_address: str | None,
) -> Resources:
    """The device and CPUs a training worker gets on the connected Ray, as the training job
    decides them (`jobs.common.cluster_info.choose_gpu`, `jobs.common.resources`)."""
    from jobs.common.cluster_info import choose_gpu, cluster_view
    from jobs.common.resources import cpus_per_train_worker

    view = cluster_view(ray_address)
    use_gpu = choose_gpu(view, device_request, what="training workers").use_gpu
    cpus = cpus_per_worker or cpus_per_train_worker(view, num_workers=num_workers)
    return Resources(
        device="gpu" if use_gpu else "cpu",
        num_workers=num_workers,
        cpus_per_worker=cpus,
        gpus_per_worker=gpus_per_worker,
        gpu_memory_gb=gpu_memory_gb,
    )


def plan_for_budget(
    fp: Fingerprint,
    *,
    budget_minutes: float,
    resources: Resources,
    step_seconds: float | None = None,
    amp: str = "auto",
) -> Plan:
    """The plan; ``step_seconds`` (seconds per step of the narrowest candidate, the others
    scaled by width) skips the measurement, for reproducible plans and tests."""
    if resources.device == "gpu" and resources.gpu_memory_gb is None and step_seconds is None:
        # the memory sets the crop and the batches the candidates are timed at: ask first
        probe = measure(
            [],
            device="gpu",
            cpus_per_worker=resources.cpus_per_worker,
            gpus_per_worker=resources.gpus_per_worker,
            amp=amp,
        )
        resources = Resources(
            **{**resources.__dict__, "gpu_memory_gb": round(probe["gpu_memory_gb"], 1)}
        )
    _, _, found = candidates(fp, resources)
    if step_seconds is not None:
        times = scaled_step_seconds(bucket(step_seconds), [c.base_width for c in found])
    else:
        times = measure(
            found,
            device=resources.device,
            cpus_per_worker=resources.cpus_per_worker,
            gpus_per_worker=resources.gpus_per_worker,
            amp=amp,
            data=data_sample(fp),
            num_workers=resources.num_workers,
        )["seconds"]
    plan = make_plan(fp, budget_minutes=budget_minutes, resources=resources, step_seconds=times)
    logger.info(
        "planned for %g min on %d %s worker(s): %s",
        budget_minutes,
        resources.num_workers,
        resources.device,
        ", ".join(f"{k}={v}" for k, v in plan.train_values().items() if k in _SUMMARY),
    )
    return plan


def data_sample(fp: Fingerprint) -> DataSample:
    """An image like the data set's (median size, channels, pixel type) and the plan's
    augmentation and border weights: what the step-time measurement makes batches from."""
    sizes = fp.sizes
    dtype = fp.intensity.dtype if fp.intensity is not None else "uint8"
    return DataSample(
        height=int(sizes.median_height or 256),
        width=int(sizes.median_width or 256),
        channels=in_channels(fp),
        dtype=dtype,
        num_classes=max(2, len(fp.classes)),
        train={k: c.value for k, c in {**augmentation(fp), **balance(fp)}.items()},
    )


_SUMMARY = ("crop_size", "base_width", "depth", "batch_size", "epochs", "samples_per_epoch", "lr")
