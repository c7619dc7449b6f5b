"""Evaluate a model on a labelled set: per-class IoU and Dice, mean IoU, pixel accuracy/error,
and (--rand-error-class) the foreground-restricted adapted Rand error of the ISBI leaderboard.

    python jobs/evaluate.py --config configs/isbi2012.yaml --model models:/unet-isbi@champion \\
        --data HELD_OUT --class-map configs/isbi2012.classes.json --scores-file eval/isbi.parquet

Runs the segmentation pipeline over images/ of the root and scores each prediction against
its mask (paired by relative path and stem): in each CPU actor, or in CPU tasks after GPU ones.
Figures over the whole set come from the summed confusion matrix (absent classes are left out
of the means); per-image figures go to the --scores-file Parquet file, one row per image. Pixel
error = 1 - pixel accuracy, the U-Net paper's ISBI 2012 metric; the Rand error is the mean of
per-image values. The last line of stdout is the JSON summary (totals, figures, confusion
matrix, the first failures, the scores file's URI).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python jobs/evaluate.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.common.cli import command_name
from jobs.common.exits import criterion_failed, dry_run_result, run_job, too_many_failed
from jobs.common.logs import setup_logging
from jobs.evaluating.job import run_evaluation
from jobs.inference.config import EvaluateConfig, parse_config

# The module's import name: __name__ is "__main__" when it runs as a script.
logger = logging.getLogger("jobs.evaluate")


def parse(argv: list[str] | None) -> EvaluateConfig:
    return parse_config(
        EvaluateConfig,
        argv,
        prog=command_name("jobs/evaluate.py"),
        description=" ".join(__doc__.split("\n\n")[0:3:2]).replace("\n", " "),
    )


def log_figures(summary: dict[str, Any]) -> None:
    fmt = lambda x: "n/a" if x is None else f"{x:.4f}"  # noqa: E731
    for name, figures in summary["per_class"].items():
        logger.info(
            "  %-20s IoU %s  Dice %s  (%d pixels)",
            name,
            fmt(figures["iou"]),
            fmt(figures["dice"]),
            figures["support"],
        )
    logger.info(
        "%d images: mean IoU %s, pixel accuracy %s, pixel error %s (%d failed)",
        summary["ok"],
        fmt(summary["mean_iou"]),
        fmt(summary["pixel_accuracy"]),
        fmt(summary["pixel_error"]),
        summary["failed"],
    )
    if "adapted_rand_error" in summary:
        logger.info(
            "adapted Rand error of %r segments %s (mean of %d images)",
            summary["adapted_rand_class"],
            fmt(summary["adapted_rand_error"]),
            summary["adapted_rand_images"],
        )


def evaluate(cfg: EvaluateConfig) -> tuple[dict[str, Any], int]:
    """The summary of a run (or of a --dry-run) and its exit code."""
    setup_logging(cfg.log_level)
    summary = run_evaluation(cfg)
    if cfg.dry_run:
        return dry_run_result(summary)
    log_figures(summary)
    if too_many_failed(summary, cfg.max_failed_fraction):
        first = summary["failed_inputs"][0]
        return criterion_failed(
            summary,
            f"{summary['failed']} of {summary['total']} image/mask pairs failed "
            f"({100 * summary['failed_fraction']:.1f}% > --max-failed-fraction "
            f"{100 * cfg.max_failed_fraction:.1f}%); the first: {first['input']}: {first['error']}",
        )
    return summary, 0


def main(argv: list[str] | None = None) -> int:
    return run_job("evaluate", lambda: parse(argv), evaluate)


if __name__ == "__main__":
    sys.exit(main())
