"""The QC report of a segment output, made again from its manifest: report.html and report/.

    python jobs/report.py --output s3://bucket/masks --s3-endpoint-url http://minio:9000
    unet-report --output runs/masks --report-worst 24

Reads the output's manifest (manifest.parquet or manifest.jsonl) streamed, without Ray or a
model run, and writes the page that jobs/segment.py --report writes at the end of a run:
counts by status, failures, class-fraction and confidence histograms, the lowest-confidence
images as thumbnails; the run's figures are the last job's, as the manifest records them.
The last stdout line is a JSON summary; exit code 2 for a missing output or manifest.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/report.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.common.cli import command_name
from jobs.common.logs import setup_logging
from jobs.reporting.config import parse_report_config
from jobs.reporting.job import run_report

logger = logging.getLogger("jobs.report")


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_report_config(
            argv,
            prog=command_name("jobs/report.py"),
            description=" ".join(__doc__.split("\n\n")[0:3:2]).replace("\n", " "),
        )
    except SystemExit as exc:  # argparse: --help (0) or a bad flag (2, message printed)
        return int(exc.code or 0)
    setup_logging(cfg.log_level)
    try:
        summary = run_report(cfg)
    except (ValueError, OSError) as exc:  # a missing output, manifest or class map
        logger.error("%s", exc)
        print(json.dumps({"error": str(exc)}), flush=True)
        return 2
    sys.stdout.flush()
    print(json.dumps(summary, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
