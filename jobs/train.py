"""Train a UNet with Ray Train on data from a folder or S3; track and register it in MLflow.

    python jobs/train.py                                    # demo: generated data, local Ray
    python jobs/train.py --data s3://bucket/set --num-workers 4 --device gpu
    ray job submit --working-dir . -- python jobs/train.py --data s3://bucket/set
    python jobs/train.py --data DIR --folds 5 --register-as unet-5fold   # docs/ensembles.md

Steps: check the data on the driver (exit 2 naming the bad files), start or resume the MLflow
run, train with TorchTrainer (jobs/training/worker_loop.py), then log curves and a validation
panel, register the best checkpoint and gate the alias. The last stdout line is a JSON summary
(exit codes: docs/flags.md).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python jobs/train.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.common.exits import dry_run_result, run_job
from jobs.common.logs import setup_logging
from jobs.training.config import TrainJobConfig, parse_args
from jobs.training.job import run_training


def train(cfg: TrainJobConfig) -> tuple[dict[str, Any], int]:
    """The summary of a run (or of a --dry-run) and its exit code."""
    setup_logging(cfg.log_level)
    summary = run_training(cfg)
    return dry_run_result(summary) if cfg.dry_run else (summary, 0)


def main(argv: list[str] | None = None) -> int:
    return run_job("train", lambda: parse_args(argv), train)


if __name__ == "__main__":
    sys.exit(main())
