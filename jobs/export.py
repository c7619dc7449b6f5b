"""Export a model as ONNX or pt2 (torch.export), checked against PyTorch; log it to MLflow.

    python jobs/export.py --model models:/unet@champion --format onnx --output unet.onnx
    python jobs/export.py --model runs/unet.pt --format pt2 --output unet.pt2

The file takes (N, C, H, W) float32 normalised as in training ((pixel / 255 - mean) / std) and
gives (N, K, H, W) logits, with dynamic N, H and W: any H x W (the padding is in the graph);
--graph uint8-mask takes (N, H, W, C) uint8 images and gives (N, H, W) class values instead.
Class names and values, mean/std and the graph kind travel in the file's metadata. The file is
run (onnxruntime, or torch.export.load) on inputs of a few sizes and compared with the model in
PyTorch; above --tolerance the job exits 1. A registered version gets the file as an artifact
of its run and export.* tags. The last stdout line is the JSON summary.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python jobs/export.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.common.cli import command_name
from jobs.common.exits import criterion_failed, run_job
from jobs.common.logs import setup_logging
from jobs.exporting.config import ExportConfig, parse_export_config
from jobs.exporting.job import run_export

# The module's import name: __name__ is "__main__" when it runs as a script.
logger = logging.getLogger("jobs.export")


def parse(argv: list[str] | None) -> ExportConfig:
    return parse_export_config(
        argv,
        prog=command_name("jobs/export.py"),
        description=" ".join(__doc__.split("\n\n")[0:3:2]).replace("\n", " "),
    )


def export(cfg: ExportConfig) -> tuple[dict[str, Any], int]:
    """The summary and its exit code: 1 when the file's logits are over --tolerance."""
    setup_logging(cfg.log_level)
    summary = run_export(cfg)
    if not summary["passed"]:
        return criterion_failed(summary, summary["error"])
    logger.info(
        "wrote %s (%d bytes): max abs logit difference %.3g on %s; %s",
        summary["output"],
        summary["bytes"],
        summary["max_abs_diff"],
        [c["shape"] for c in summary["checks"]],
        f"logged as {summary['artifact_uri']}" if summary["artifact_uri"] else "not logged",
    )
    return summary, 0


def main(argv: list[str] | None = None) -> int:
    return run_job("export", lambda: parse(argv), export)


if __name__ == "__main__":
    sys.exit(main())
