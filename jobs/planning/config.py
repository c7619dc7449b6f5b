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
from jobs.common.vocabulary import device_problems, normal_workers, parse_workers

SECTION = "plan"
"""The section of a recipe file (configs/*.yaml) that this job reads."""


@dataclass
class PlanConfig(DecodeFlags):
    """`jobs/plan.py`: the fingerprint of a labelled data set."""

    data: str = ""
    """Data root (local folder or s3://bucket/prefix) holding images/, masks/ and classes.json."""
    output: str | None = None
    """Write the fingerprint JSON to this file (local or s3://); with --budget-minutes, the planned recipe (YAML, the configs/*.yaml format) instead, and the fingerprint to --fingerprint-out; default: only in the summary line on stdout."""
    budget_minutes: float | None = None
    """Plan a training run of this many minutes: every training setting (crop, depth, width, batch, epochs, crops per epoch, learning rate, augmentation, class balance, border weights; TTA and tiles for segment and evaluate), each with the reason, from the fingerprint, the resources below and a measured step time. Default: the fingerprint only."""
    fingerprint_out: str | None = None
    """With --budget-minutes: where the fingerprint JSON goes; default beside --output as <name>.fingerprint.json."""
    num_workers: int | str = 2
    """Training workers the plan is for (N, or MIN-MAX: planned for MAX), as train's --num-workers."""
    device: str = "auto"
    """Device of the training workers the plan is for: cpu, gpu, or auto (decided as train decides it)."""
    cpus_per_worker: float | None = None
    """Logical CPUs per training worker, as train's; default: as train decides them."""
    gpus_per_worker: float = 1.0
    """GPUs per training worker on gpu, as train's."""
    gpu_memory_gb: float | None = None
    """Memory of one GPU in GB (sets the crop and batch on gpu); default: measured on a GPU worker."""
    step_seconds: float | None = None
    """Seconds per training step of the narrowest candidate (the others scaled by width), instead of timing a few steps on a training worker: for a reproducible plan."""
    amp: str = "auto"
    """Mixed precision the step time is measured with, as train's --amp (auto, bf16, off)."""
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
        problems += self.budget_problems()
        if problems:
            raise ValueError("; ".join(problems))

    def budget_problems(self) -> list[str]:
        """What is wrong with the planning flags (each with the fix)."""
        problems = device_problems(self.device, self.gpus_per_worker)
        try:
            self.num_workers = normal_workers(self.num_workers)
        except ValueError as exc:
            problems.append(str(exc))
        if self.budget_minutes is not None and not self.budget_minutes > 0:
            problems.append(f"--budget-minutes must be > 0, got {self.budget_minutes}")
        for name in ("cpus_per_worker", "gpu_memory_gb", "step_seconds"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                problems.append(f"--{name.replace('_', '-')} must be > 0, got {value}")
        if self.amp not in ("auto", "bf16", "off"):
            problems.append(f"--amp must be one of auto, bf16, off, got {self.amp!r}")
        return problems

    @property
    def workers(self) -> int:
        """Training workers planned for: N, or MAX of MIN-MAX."""
        return parse_workers(self.num_workers)[1]


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
        metavar = {
            "data": "URI",
            "output": "FILE",
            "class_map": "FILE",
            "fingerprint_out": "FILE",
            "num_workers": "N|MIN-MAX",
            "device": "auto|cpu|gpu",
            "budget_minutes": "MINUTES",
            "cpus_per_worker": "X",
            "gpus_per_worker": "X",
            "gpu_memory_gb": "GB",
            "step_seconds": "X",
            "amp": "auto|bf16|off",
        }.get(f.name, f.name.upper())
        add_field_flag(parser, f.name, hints[f.name], text, metavar=metavar)
    return parser


def parse_plan_config(argv: list[str] | None, *, prog: str, description: str) -> PlanConfig:
    """Flags (and --config) -> `PlanConfig`; invalid values exit 2 with the reason."""
    return parse_fields(PlanConfig, build_parser(prog, description), argv, section=SECTION)
