"""Configuration of `jobs/export.py`: one typed dataclass, a flag per field (help = docstring).

Imports neither torch nor MLflow: `--help` and flag errors answer at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from dataclasses import dataclass

from jobs.common.cli import add_config_flag, add_field_flag, field_docs, parse_fields
from jobs.common.vocabulary import logs_to_mlflow

FORMATS = ("onnx", "pt2")
GRAPHS = ("logits", "uint8-mask")
"""`jobs.exporting.graph.GRAPHS` (repeated here: this module imports no torch)."""
SECTION = "export"
"""The section of a recipe file (configs/*.yaml) that this job reads."""
_SIZE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


@dataclass
class ExportConfig:
    """`jobs/export.py`: a model as an ONNX or torch.export (pt2) file, checked against PyTorch."""

    model: str = ""
    """Registered MLflow model (models:/NAME@ALIAS, models:/NAME/VERSION; also runs:/RUN/PATH) or a local or s3:// unet_core checkpoint (file, or a folder holding unet.pt)."""
    format: str = ""
    """onnx: an ONNX file for onnxruntime and other runtimes (needs the export extra: pip install -e '.[export]' in a checkout); pt2: a torch.export program (torch.export.load), exported on CPU."""
    graph: str = "logits"
    """What the file takes and gives: logits: (N, C, H, W) float32 normalised as in training -> (N, K, H, W) float32 logits; uint8-mask: (N, H, W, C) uint8 images as decoded -> (N, H, W) class values (uint8; uint16 for class values above 255), the normalisation and argmax inside (models of 8-bit images: legacy_uint8 and scale_zscore preprocessing; a clip_zscore model is refused). Both take any H x W."""
    output: str = ""
    """Local file to write (replaced atomically if it exists), e.g. unet.onnx or unet.pt2."""
    tolerance: float = 1e-3
    """Largest max-abs difference of logits between the exported file and the PyTorch model (fp32, same normalised input) before the job fails (exit 1)."""
    check_sizes: str = "auto"
    """Input sizes HxW of the check, comma-separated (e.g. 256x256,511x383), any sides >= 1; the first runs with batch 2, the others with batch 1. auto: (3m + 1) x (2m + 3), 1 x 1 and (m - 1) x (4m) for m the multiple the model pads to (2**depth)."""
    opset: int | None = None
    """ONNX opset to target (onnx only); default: the exporter's recommended opset."""
    log_to_mlflow: bool | None = None
    """For a model from MLflow: log the file as an artifact of the model's run (<artifact-path>/unet.onnx or unet.pt2) and, for a registered version, tag it (export.<format> = the artifact URI, export.<format>.max_abs_diff, export.<format>.sha256); default: on when a tracking store is named (--tracking-uri or $MLFLOW_TRACKING_URI) or --model is an MLflow URI (models:/, runs:/), else off. Nothing is logged for a checkpoint path or when the check fails."""
    artifact_path: str = "export"
    """Folder of the model run's artifacts that receives the exported file."""
    tracking_uri: str | None = None
    """MLflow tracking URI; default $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db (made absolute)."""
    s3_endpoint_url: str | None = None
    """S3-compatible endpoint for an s3:// checkpoint (MinIO, a local server); default $AWS_ENDPOINT_URL."""
    log_level: str = "INFO"
    """Logging level (stderr)."""

    def __post_init__(self) -> None:
        problems = []
        if not self.model:
            problems.append(
                "--model is required (models:/NAME@ALIAS, models:/NAME/VERSION or a checkpoint)"
            )
        if self.format not in FORMATS:
            got = f", got {self.format!r}" if self.format else ""
            problems.append(f"--format must be one of {', '.join(FORMATS)}{got}")
        if self.graph not in GRAPHS:
            problems.append(f"--graph must be one of {', '.join(GRAPHS)}, got {self.graph!r}")
        if not self.output:
            problems.append("--output is required (the file to write, e.g. unet.onnx)")
        elif "://" in self.output:
            problems.append(
                f"--output {self.output}: give a local file path; with a model from MLflow the "
                "file is also logged to the model's run (--log-to-mlflow)"
            )
        if not self.tolerance >= 0:
            problems.append(f"--tolerance must be >= 0, got {self.tolerance}")
        if self.opset is not None and self.opset < 7:
            problems.append(f"--opset must be an ONNX opset number (e.g. 18), got {self.opset}")
        if self.opset is not None and self.format == "pt2":
            problems.append("--opset applies to --format onnx only; leave it out for pt2")
        if self.check_sizes.strip().lower() != "auto":
            try:
                self.sizes(multiple=1)
            except ValueError as exc:
                problems.append(str(exc))
        if not self.artifact_path.strip("/"):
            problems.append("--artifact-path must name a folder, e.g. export")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def mlflow_logging(self) -> bool:
        """--log-to-mlflow, or its default (`jobs.common.vocabulary.logs_to_mlflow`)."""
        return logs_to_mlflow(self.log_to_mlflow, self.tracking_uri, self.model)

    def sizes(self, *, multiple: int) -> list[tuple[int, int]]:
        """The (H, W) sizes of the check for a model that pads to a multiple of ``multiple``
        (2**depth): sizes that need padding, reflect and replicate, and a 1 x 1."""
        if self.check_sizes.strip().lower() == "auto":
            return [
                (3 * multiple + 1, 2 * multiple + 3),
                (1, 1),
                (max(multiple - 1, 1), 4 * multiple),
            ]
        sizes = []
        for part in self.check_sizes.split(","):
            match = _SIZE.match(part)
            if not match or min(int(match[1]), int(match[2])) < 1:
                raise ValueError(
                    f"--check-sizes {self.check_sizes!r}: {part.strip()!r} is not HxW with "
                    "sides >= 1 (e.g. 256x256,511x383), or give auto"
                )
            sizes.append((int(match[1]), int(match[2])))
        return sizes


def build_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """One flag per field of `ExportConfig`; help = the field's docstring and its default."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, argument_default=argparse.SUPPRESS
    )
    add_config_flag(parser, SECTION, "tolerance: 1e-4")
    hints = typing.get_type_hints(ExportConfig)
    docs = field_docs(ExportConfig)
    for f in dataclasses.fields(ExportConfig):
        doc = docs.get(f.name, "")
        if f.name in ("model", "format", "output"):
            text = f"{doc} (required)"
        elif f.default is None:
            text = doc if "default" in doc.lower() else f"{doc} (default: none)"
        else:
            text = f"{doc} (default: {f.default})"
        metavar = {
            "model": "URI",
            "output": "FILE",
            "format": "|".join(FORMATS),
            "graph": "|".join(GRAPHS),
        }
        add_field_flag(
            parser, f.name, hints[f.name], text, metavar=metavar.get(f.name, f.name.upper())
        )
    return parser


def parse_export_config(argv: list[str] | None, *, prog: str, description: str) -> ExportConfig:
    """Flags (and --config) -> `ExportConfig`: defaults < config file < command line; invalid
    values exit 2 with the reason (argparse's error line)."""
    return parse_fields(ExportConfig, build_parser(prog, description), argv, section=SECTION)
