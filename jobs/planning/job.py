"""The fingerprint of a data set, from the listing to the JSON: what `jobs/plan.py` calls."""

from __future__ import annotations

import logging
import time
from typing import Any

import ray

from jobs.common import fs
from jobs.common.logs import quiet_ray_logs
from jobs.common.ray_cluster import connect_ray
from jobs.common.vocabulary import device_request
from jobs.planning.budget import plan_for_budget, training_resources
from jobs.planning.config import PlanConfig
from jobs.planning.fingerprint import Fingerprint, build_fingerprint, intensity_stats
from jobs.planning.names import summarise_groups
from jobs.planning.plan import Plan
from jobs.planning.recipe import to_yaml
from jobs.planning.scan import list_pairs, read_class_map, scan

logger = logging.getLogger(__name__)


def fingerprint_data(cfg: PlanConfig) -> Fingerprint:
    """List, read (Ray Data tasks; a local Ray when none is running) and summarise."""
    endpoint = fs.s3_endpoint(cfg.s3_endpoint_url)
    root = fs.absolute(cfg.data)
    class_map = read_class_map(root, cfg.class_map, endpoint_url=endpoint)
    pairs = list_pairs(root, endpoint_url=endpoint)
    owned = connect_ray(cfg.ray_address, dashboard=False)
    quiet_ray_logs(cfg.log_level)
    try:
        tally = scan(
            root,
            pairs,
            class_map,
            sample=cfg.sample,
            seed=cfg.seed,
            endpoint_url=endpoint,
            decode=cfg.decode_options,
        )
    finally:
        if owned:
            ray.shutdown()
    if tally.failures:
        logger.warning(
            "%d file(s) could not be read (left out): %s",
            tally.failures,
            "; ".join(tally.failure_examples),
        )
    return build_fingerprint(
        tally,
        root=root,
        seed=cfg.seed,
        class_names=class_map.names,
        name_groups=summarise_groups([p.key for p in pairs]),
        intensity=intensity_stats(tally, cfg.seed),
    )


def plan_recipe(cfg: PlanConfig, fingerprint: Fingerprint) -> Plan:
    """The plan of ``cfg.budget_minutes`` for the training resources the flags name (Ray
    connected: the step time is measured on a training worker's resources)."""
    resources = training_resources(
        device_request=device_request(cfg.device),
        num_workers=cfg.workers,
        cpus_per_worker=cfg.cpus_per_worker,
        gpus_per_worker=cfg.gpus_per_worker,
        gpu_memory_gb=cfg.gpu_memory_gb,
        ray_address=cfg.ray_address,
    )
    return plan_for_budget(
        fingerprint,
        budget_minutes=cfg.budget_minutes,
        resources=resources,
        step_seconds=cfg.step_seconds,
        amp=cfg.amp,
    )


def _write(uri: str, text: str, cfg: PlanConfig, what: str) -> str:
    output = fs.absolute(uri)
    filesystem, path = fs.resolve(output, endpoint_url=fs.s3_endpoint(cfg.s3_endpoint_url))
    fs.write_bytes_atomic(filesystem, path, text.encode())
    logger.info("wrote the %s to %s", what, output)
    return output


def fingerprint_path(cfg: PlanConfig) -> str | None:
    """Where the fingerprint goes: --output without a budget; with one, --fingerprint-out,
    else <output stem>.fingerprint.json beside the recipe."""
    if not cfg.budget_minutes:
        return cfg.output
    if cfg.fingerprint_out or not cfg.output:
        return cfg.fingerprint_out
    stem = cfg.output.rsplit(".", 1)[0] if "." in cfg.output.rsplit("/", 1)[-1] else cfg.output
    return f"{stem}.fingerprint.json"


def run_plan(cfg: PlanConfig) -> dict[str, Any]:
    """Fingerprint ``cfg.data``; write it to ``cfg.output`` when given. With a budget, plan a
    training run and write its recipe to ``cfg.output`` (the fingerprint beside it). The job's
    summary: the fingerprint (and the recipe), where they were written, and the seconds it
    took."""
    started = time.monotonic()
    owned = connect_ray(cfg.ray_address, dashboard=False)  # one Ray for the scan and the timing
    try:
        fingerprint = fingerprint_data(cfg)
        plan = plan_recipe(cfg, fingerprint) if cfg.budget_minutes else None
    finally:
        if owned:
            ray.shutdown()
    where = fingerprint_path(cfg)
    output = _write(where, fingerprint.to_json(), cfg, "fingerprint") if where else None
    summary: dict[str, Any] = {"output": output}
    if plan is not None:
        text = to_yaml(plan, command=f"unet-train --config {cfg.output or 'recipe.yaml'} ...")
        recipe = _write(cfg.output, text, cfg, "recipe") if cfg.output else None
        summary = {"output": recipe, "fingerprint_output": output, "recipe": text}
        summary["plan"] = plan.train_values()
    return {
        **summary,
        "seconds": round(time.monotonic() - started, 2),
        "fingerprint": fingerprint.to_dict(),
    }
