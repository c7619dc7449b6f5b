"""Configuration of `jobs/plan.py`: one typed dataclass, a flag per field (help = docstring).

Imports neither torch nor Ray: `--help` and flag errors answer at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass

from jobs.common.cli import add_config_flag, add_field_flag, field_docs, parse_fields
from jobs.common.decode_flags import DecodeFlags

SECTION = "plan"
"""The section of a recipe file (configs/*.yaml) that this job reads."""


@dataclass
class PlanConfig(DecodeFlags):
    """`jobs/plan.py`: the fingerprint of a labelled data set."""

    data: str = ""
    """Data root (local folder or s3://bucket/prefix) holding images/, masks/ and classes.json."""
    output: str | None = None
    """Write the fingerprint JSON to this file (local or s3://); default: only in the summary line on stdout."""
    sample: int = 2000
    """Pairs read in full (a seeded sample) for the intensity, class, object and layout statistics; sizes, modes and name groups come from every pair."""
    seed: int = 0
    """Seed of the sample: the same data and seed give the same fingerprint."""
    class_map: str | None = None
    """Class map JSON file (local or s3://); default: classes.json at the data root."""
    s3_endpoint_url: str | None = None
    """S3-compatible endpoint (MinIO, a local server); default: $AWS_ENDPOINT_URL."""
    ray_address: str | None = None
    """Ray cluster to connect to; default: $RAY_ADDRESS, else a local Ray is started."""
    log_level: str = "INFO"
    """Logging level (stderr)."""

    def __post_init__(self) -> None:
        problems = self.decode_problems()
        if not self.data:
            problems.append("--data is required (a folder or s3:// prefix with images/, masks/)")
        if self.sample < 1:
            problems.append(f"--sample must be >= 1, got {self.sample}")
        if problems:
            raise ValueError("; ".join(problems))


def build_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """One flag per field of `PlanConfig`; help = the field's docstring and its default."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, argument_default=argparse.SUPPRESS
    )
    add_config_flag(parser, SECTION, "sample: 500")
    hints = typing.get_type_hints(PlanConfig)
    docs = field_docs(PlanConfig)
    for f in dataclasses.fields(PlanConfig):
        doc = docs.get(f.name, "")
        if f.name == "data":
            text = f"{doc} (required)"
        elif f.default is None:
            text = doc if "default" in doc.lower() else f"{doc} (default: none)"
        else:
            text = f"{doc} (default: {f.default})"
        metavar = {"data": "URI", "output": "FILE", "class_map": "FILE"}.get(f.name, f.name.upper())
        add_field_flag(parser, f.name, hints[f.name], text, metavar=metavar)
    return parser


def parse_plan_config(argv: list[str] | None, *, prog: str, description: str) -> PlanConfig:
    """Flags (and --config) -> `PlanConfig`; invalid values exit 2 with the reason."""
    return parse_fields(PlanConfig, build_parser(prog, description), argv, section=SECTION)
