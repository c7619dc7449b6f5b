"""Placement groups that stopped trials leave behind (ray-project/ray#54305).

A trial ASHA stops is killed with its Ray Train controller, and the placement group of the
trial's workers outlives them (a placement group made by an actor lives as long as its job).
Ray Train 2.60 starts a cleaner per run that removes it once the controller is gone, but in our
measurements on Ray 2.60 it did not: the stopped trial's workers' CPUs stayed reserved and the
next trial that needed them waited forever (docs/tuning.md). So the search removes, once
Ray Tune has returned, every placement group of its own job still held that it did not hold
before: at that point no trial runs, and a placement group id ends with the id of the job that
made it, so other jobs' placement groups are never touched.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

HELD = ("PENDING", "CREATED", "RESCHEDULING")
"""Placement-group states that hold (or wait for) resources."""


def held_by_this_job() -> set[str]:
    """Ids (hex) of the placement groups this job (the connected driver's) holds now."""
    import ray
    from ray.util import placement_group_table

    job = ray.get_runtime_context().get_job_id()
    return {
        pg_id
        for pg_id, info in placement_group_table().items()
        if pg_id.endswith(job) and info.get("state") in HELD
    }


def release_leftovers(before: set[str]) -> int:
    """Remove this job's placement groups held now and not in ``before``; how many."""
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    leftovers = sorted(held_by_this_job() - before)
    for pg_id in leftovers:
        remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(pg_id)))
    if leftovers:
        logger.warning(
            "removed %d placement group(s) that stopped trials kept (ray-project/ray#54305)",
            len(leftovers),
        )
    return len(leftovers)
