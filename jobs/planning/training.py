"""`train --plan auto --budget-minutes M`: fingerprint the training data and plan the run for
the resources its workers will get; the training job fills every field the command line and
--config left open with the plan's value (Ray connected) and logs the fingerprint and the recipe
with its run."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from jobs.planning.config import PlanConfig
from jobs.planning.fingerprint import Fingerprint
from jobs.planning.job import fingerprint_data, plan_recipe
from jobs.planning.plan import Plan
from jobs.planning.recipe import to_yaml

logger = logging.getLogger(__name__)

FINGERPRINT_ARTIFACT = "fingerprint.json"
"""The fingerprint in the run's artifacts."""
RECIPE_ARTIFACT = "plan.yaml"
"""The planned recipe in the run's artifacts (with the values flags overrode)."""


@dataclass
class PlannedRun:
    """What --plan auto found and set."""

    fingerprint: Fingerprint
    """The training data's fingerprint."""
    plan: Plan
    """The plan, every value with its reason."""
    applied: dict[str, Any] = field(default_factory=dict)
    """Planned values the run uses."""
    overridden: list[str] = field(default_factory=list)
    """Planned fields that a flag or --config set instead."""

    def artifacts(self) -> dict[str, Any]:
        """Run artifacts: name -> JSON-able value or text."""
        text = to_yaml(self.plan)
        if self.overridden:
            text += f"# set by flags or --config instead: {', '.join(self.overridden)}\n"
        return {FINGERPRINT_ARTIFACT: self.fingerprint.to_dict(), RECIPE_ARTIFACT: text}


def plan_training(cfg: Any) -> PlannedRun:
    """The plan of a training job's config (`jobs.training.config.TrainJobConfig`, its data
    resolved), and the planned values for the fields not in ``cfg.given``."""
    plan_cfg = PlanConfig(
        data=cfg.data,
        class_map=cfg.class_map,
        s3_endpoint_url=cfg.s3_endpoint_url,
        ray_address=cfg.ray_address,
        exif_transpose=cfg.exif_transpose,
        max_image_pixels=cfg.max_image_pixels,
        seed=cfg.train.seed,
        log_level=cfg.log_level,
        budget_minutes=cfg.budget_minutes,
        num_workers=cfg.num_workers,
        device=cfg.device,
        cpus_per_worker=cfg.cpus_per_worker,
        gpus_per_worker=cfg.gpus_per_worker,
        amp=cfg.amp,
    )
    fingerprint = fingerprint_data(plan_cfg)
    plan = plan_recipe(plan_cfg, fingerprint)
    planned = plan.train_values()
    applied = {k: v for k, v in planned.items() if k not in cfg.given}
    overridden = sorted(k for k in planned if k in cfg.given)
    if overridden:
        logger.info("--plan auto: kept the given %s", ", ".join(overridden))
    return PlannedRun(fingerprint, plan, applied, overridden)
