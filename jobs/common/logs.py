"""Logging set-up of the jobs: the driver's format, Ray's own chatter, the workers' levels."""

from __future__ import annotations

import logging
import sys

OUR_LOGGERS = ("unet_ray", "jobs", "unet_core")


def setup_logging(level: str) -> None:
    """Timestamped lines on stderr (stdout is kept for the job's JSON result)."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def quiet_ray_logs(level: str) -> None:
    """Ray Data progress bars and per-report Ray Train logs only at DEBUG: the jobs print their
    own progress lines (one per epoch from rank 0, one every few seconds from batch jobs)."""
    import ray.data

    if logging.getLevelName(level) > logging.DEBUG:
        context = ray.data.DataContext.get_current()  # carried to the split coordinators too
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)


def quiet_worker_logs(level: str) -> None:
    """Our loggers at `level`; everything else at WARNING unless DEBUG. Ray Train configures
    the worker's root logger at INFO, and some of its per-report messages bypass its own
    LoggingConfig filter (their logger is named after a file path)."""
    logging.getLogger().setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
    for name in OUR_LOGGERS:
        logging.getLogger(name).setLevel(level)
