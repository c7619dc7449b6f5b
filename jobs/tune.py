"""Search training settings with Ray Tune and ASHA; each trial a Ray Train run of the train job.

    python jobs/tune.py --data s3://bucket/set --trials 16 --epochs 20 --grace-epochs 2
    python jobs/tune.py --data DIR --search-space space.yaml --dry-run
    ray job submit --working-dir . -- python jobs/tune.py --data s3://bucket/set

Takes every flag of jobs/train.py (the base each trial starts from) plus --search-space,
--trials, --max-concurrent-trials, --grace-epochs and --metric. The search is one MLflow parent
run, every trial a child run; the best trial is registered through the train job's alias gate
(docs/tuning.md). The last stdout line is a JSON summary (exit codes: docs/flags.md).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python jobs/tune.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.common.exits import criterion_failed, dry_run_result, run_job
from jobs.common.logs import setup_logging
from jobs.tuning.config import TuneJobConfig, parse_tune_args
from jobs.tuning.search import run_search


def tune(cfg: TuneJobConfig) -> tuple[dict[str, Any], int]:
    """The summary of a search (or of a --dry-run) and its exit code."""
    setup_logging(cfg.train.log_level)
    summary = run_search(cfg)
    if cfg.train.dry_run:
        return dry_run_result(summary)
    if summary["best_trial"] is None:  # every trial failed before its first checkpoint
        return criterion_failed(summary, "no trial of the search reported a checkpoint")
    return summary, 0


def main(argv: list[str] | None = None) -> int:
    return run_job("tune", lambda: parse_tune_args(argv), tune)


if __name__ == "__main__":
    sys.exit(main())
