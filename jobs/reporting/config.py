"""Configuration of `jobs/report.py`: one typed dataclass, a flag per field (help = docstring).

Imports neither torch nor Ray: `--help` and flag errors answer at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass

from jobs.common.cli import add_config_flag, add_field_flag, field_docs, parse_fields
from jobs.common.decode_flags import DecodeFlags

SECTION = "report"
"""The section of a recipe file (configs/*.yaml) that this job reads."""


@dataclass
class ReportConfig(DecodeFlags):
    """`jobs/report.py`: the QC report of an existing segment output, from its manifest."""

    output: str = ""
    """Folder or s3://bucket/prefix that jobs/segment.py wrote (masks/, manifest.parquet or manifest.jsonl); report.html and report/ are written there."""
    report_worst: int = 12
    """Lowest mean-confidence images the report shows as image | mask | overlay thumbnails (0: none)."""
    class_map: str | None = None
    """Class map JSON (local or s3://) for the thumbnails' colours and for reading masks written with --mask-format values; default: the class map of the model that made the last job's masks (the manifest's model_uri)."""
    tracking_uri: str | None = None
    """MLflow tracking URI, to read the class map of a models:/ model; default $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db (made absolute)."""
    s3_endpoint_url: str | None = None
    """S3-compatible endpoint for an s3:// output (MinIO, a local server); default $AWS_ENDPOINT_URL."""
    log_level: str = "INFO"
    """Logging level (stderr)."""

    def __post_init__(self) -> None:
        problems = self.decode_problems()
        if not self.output:
            problems.append("--output is required (the folder or s3:// prefix segment wrote)")
        if self.report_worst < 0:
            problems.append(f"--report-worst must be >= 0, got {self.report_worst}")
        if problems:
            raise ValueError("; ".join(problems))


def build_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """One flag per field of `ReportConfig`; help = the field's docstring and its default."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, argument_default=argparse.SUPPRESS
    )
    add_config_flag(parser, SECTION, "report_worst: 24")
    hints = typing.get_type_hints(ReportConfig)
    docs = field_docs(ReportConfig)
    for f in dataclasses.fields(ReportConfig):
        doc = docs.get(f.name, "")
        if f.name == "output":
            text = f"{doc} (required)"
        elif f.default is None:
            text = doc if "default" in doc.lower() else f"{doc} (default: none)"
        else:
            text = f"{doc} (default: {f.default})"
        metavar = "URI" if f.name in ("output", "class_map") else f.name.upper()
        add_field_flag(parser, f.name, hints[f.name], text, metavar=metavar)
    return parser


def parse_report_config(argv: list[str] | None, *, prog: str, description: str) -> ReportConfig:
    """Flags (and --config) -> `ReportConfig`: defaults < config file < command line; invalid
    values exit 2 with the reason (argparse's error line)."""
    return parse_fields(ReportConfig, build_parser(prog, description), argv, section=SECTION)
