"""Batch segmentation: one mask per image of a folder or bucket, with a manifest.

    python jobs/segment.py --input s3://bucket/images --output s3://bucket/masks \\
        --model models:/unet@champion --num-workers 1-4 --device gpu

Ray tasks list --input (or read --input-list); an actor pool that loads the model once per
actor predicts, all streamed: CPU actors also read, decode, encode and write their own images,
GPU actors are fed by decode tasks and followed by encode/write tasks.
A rerun skips the inputs whose mask this model made with these settings (the manifest says
so), so a rerun after a crash or a kill finishes the job; masks another model version made
stop it unless --redo-other-versions (or --overwrite) is given. Progress goes to stderr; the
last line of stdout is a JSON summary. Exit code 1 when failed / total exceeds
--max-failed-fraction, 2 for bad arguments or an output that another model's masks hold, 3 for
an unexpected failure (docs/flags.md).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python jobs/segment.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.common.cli import command_name
from jobs.common.exits import criterion_failed, dry_run_result, run_job, too_many_failed
from jobs.common.logs import setup_logging
from jobs.inference.config import SegmentConfig, parse_config
from jobs.segmenting.job import run_segmentation

# The module's import name: __name__ is "__main__" when it runs as a script.
logger = logging.getLogger("jobs.segment")


def parse(argv: list[str] | None) -> SegmentConfig:
    return parse_config(
        SegmentConfig,
        argv,
        prog=command_name("jobs/segment.py"),
        description=__doc__.split("\n\n")[0] + " " + __doc__.split("\n\n")[2].replace("\n", " "),
    )


def segment(cfg: SegmentConfig) -> tuple[dict[str, Any], int]:
    """The summary of a run (or of a --dry-run) and its exit code."""
    setup_logging(cfg.log_level)
    summary = run_segmentation(cfg)
    if cfg.dry_run:
        return dry_run_result(summary)
    logger.info(
        "done: %d total, %d ok, %d failed, %d skipped in %.1f s (%.2f images/s); manifest %s",
        summary["total"],
        summary["ok"],
        summary["failed"],
        summary["skipped"],
        summary["seconds"],
        summary["images_per_second"],
        summary["manifest"],
    )
    if too_many_failed(summary, cfg.max_failed_fraction):
        return criterion_failed(
            summary,
            f"{summary['failed']} of {summary['total']} inputs failed "
            f"({100 * summary['failed_fraction']:.1f}% > --max-failed-fraction "
            f"{100 * cfg.max_failed_fraction:.1f}%); see {summary['manifest']}",
        )
    return summary, 0


def main(argv: list[str] | None = None) -> int:
    return run_job("segment", lambda: parse(argv), segment)


if __name__ == "__main__":
    sys.exit(main())
