"""The fingerprint of a labelled data set, as JSON.

    python jobs/plan.py --data s3://bucket/camvid --output camvid.fingerprint.json
    unet-plan --data data/isbi2012 --sample 500
    unet-plan --data data/isbi2012 --budget-minutes 20 --num-workers 2 --output isbi.yaml

Lists every image/mask pair (a folder or an S3 prefix), reads every image header (sizes,
channels, pixel types) and a seeded sample of pairs in full, in Ray Data tasks: per-channel
intensity statistics, class pixel frequencies, object sizes and how often objects of a class
touch, whether the classes have a vertical layout, and groups of near-duplicate names (frames,
slices) that a split must keep together. The last stdout line is a JSON summary holding the
fingerprint (also written to --output); exit code 2 for a missing or unpaired data set. With
--budget-minutes it also plans a training run of that length for the workers and device named
(a few training steps timed on a training worker) and writes the recipe, every setting with its
reason, to --output (the fingerprint beside it).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python jobs/plan.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.common.cli import command_name
from jobs.common.exits import run_job
from jobs.common.logs import setup_logging
from jobs.planning.config import PlanConfig, parse_plan_config


def parse(argv: list[str] | None) -> PlanConfig:
    return parse_plan_config(
        argv,
        prog=command_name("jobs/plan.py"),
        description=" ".join(__doc__.split("\n\n")[0:3:2]).replace("\n", " "),
    )


def plan(cfg: PlanConfig) -> tuple[dict[str, Any], int]:
    setup_logging(cfg.log_level)
    from jobs.planning.job import run_plan  # Ray and the readers: not for --help

    return run_plan(cfg), 0


def main(argv: list[str] | None = None) -> int:
    return run_job("plan", lambda: parse(argv), plan)


if __name__ == "__main__":
    sys.exit(main())
