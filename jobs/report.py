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

import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python jobs/report.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.common.cli import command_name
from jobs.common.exits import run_job
from jobs.common.logs import setup_logging
from jobs.reporting.config import ReportConfig, parse_report_config
from jobs.reporting.job import run_report


def parse(argv: list[str] | None) -> ReportConfig:
    return parse_report_config(
        argv,
        prog=command_name("jobs/report.py"),
        description=" ".join(__doc__.split("\n\n")[0:3:2]).replace("\n", " "),
    )


def report(cfg: ReportConfig) -> tuple[dict[str, Any], int]:
    setup_logging(cfg.log_level)
    started = time.perf_counter()
    summary = run_report(cfg)
    return {**summary, "seconds": round(time.perf_counter() - started, 3)}, 0


def main(argv: list[str] | None = None) -> int:
    return run_job("report", lambda: parse(argv), report)


if __name__ == "__main__":
    sys.exit(main())
