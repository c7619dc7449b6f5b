"""Train a UNet with Ray Train on data from a folder or S3; track and register it in MLflow.

    python jobs/train.py                                    # demo: generated data, local Ray
    python jobs/train.py --data s3://bucket/set --num-workers 4 --device gpu
    ray job submit --working-dir . -- python jobs/train.py --data s3://bucket/set

Steps: check the data on the driver (exit 2 naming the bad files), start or resume the MLflow
run, train with TorchTrainer (jobs/training/worker_loop.py), then log curves and a validation
panel, register the best checkpoint and gate the alias. The last stdout line is a JSON summary.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/train.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.common.cli import finish_dry_run
from jobs.common.logs import setup_logging
from jobs.common.path_guard import LocalPathError
from jobs.training.config import parse_args
from jobs.training.data_checks import DataValidationError
from jobs.training.job import run_training

# The module's import name: __name__ is "__main__" when it runs as a script.
log = logging.getLogger("jobs.train")


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a bad flag (2, message printed)
        return int(exc.code or 0)
    setup_logging(cfg.log_level)
    try:
        summary = run_training(cfg)
    except (DataValidationError, LocalPathError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the reason on stderr; the traceback only with --log-level DEBUG
        log.debug("training failed", exc_info=True)
        print(f"error: training failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if cfg.dry_run:
        return finish_dry_run(summary)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
