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
--max-failed-fraction, 2 for bad arguments or an output that another model's masks hold.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/segment.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.common.cli import command_name, finish_dry_run
from jobs.common.logs import setup_logging
from jobs.common.model_source import ModelSourceError
from jobs.inference.config import SegmentConfig, parse_config
from jobs.segmenting.job import run_segmentation

# The module's import name: __name__ is "__main__" when it runs as a script.
logger = logging.getLogger("jobs.segment")


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(
        SegmentConfig,
        argv,
        prog=command_name("jobs/segment.py"),
        description=__doc__.split("\n\n")[0] + " " + __doc__.split("\n\n")[2].replace("\n", " "),
    )
    setup_logging(cfg.log_level)
    try:
        summary = run_segmentation(cfg)
    except (ModelSourceError, ValueError, FileNotFoundError, NotADirectoryError) as exc:
        logger.error("%s", exc)
        print(json.dumps({"error": str(exc)}), flush=True)
        return 2
    if cfg.dry_run:
        return finish_dry_run(summary)
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
    too_many = summary["failed"] > 0 and summary["failed_fraction"] > cfg.max_failed_fraction
    if too_many:
        logger.error(
            "%d of %d inputs failed (%.1f%% > --max-failed-fraction %.1f%%); see %s",
            summary["failed"],
            summary["total"],
            100 * summary["failed_fraction"],
            100 * cfg.max_failed_fraction,
            summary["manifest"],
        )
    sys.stdout.flush()
    print(json.dumps(summary), flush=True)
    return 1 if too_many else 0


if __name__ == "__main__":
    sys.exit(main())
