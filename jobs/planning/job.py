"""The fingerprint of a data set, from the listing to the JSON: what `jobs/plan.py` calls."""

from __future__ import annotations

import logging
import time
from typing import Any

import ray

from jobs.common import fs
from jobs.common.logs import quiet_ray_logs
from jobs.common.ray_cluster import connect_ray
from jobs.planning.config import PlanConfig
from jobs.planning.fingerprint import Fingerprint, build_fingerprint, intensity_stats
from jobs.planning.names import summarise_groups
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


def run_plan(cfg: PlanConfig) -> dict[str, Any]:
    """Fingerprint ``cfg.data``; write it to ``cfg.output`` when given. The job's summary:
    the fingerprint, where it was written, and the seconds it took."""
    started = time.monotonic()
    fingerprint = fingerprint_data(cfg)
    output = None
    if cfg.output:
        output = fs.absolute(cfg.output)
        filesystem, path = fs.resolve(output, endpoint_url=fs.s3_endpoint(cfg.s3_endpoint_url))
        fs.write_bytes_atomic(filesystem, path, fingerprint.to_json().encode())
        logger.info("wrote the fingerprint to %s", output)
    return {
        "output": output,
        "elapsed_seconds": round(time.monotonic() - started, 2),
        "fingerprint": fingerprint.to_dict(),
    }
