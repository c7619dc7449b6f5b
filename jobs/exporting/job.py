"""One export run: resolve and fetch the model, export it, check the file, log it to MLflow.

The model's source is pinned once (`jobs.common.model_source`, as the batch jobs do: an
alias becomes a fixed version), the checkpoint rebuilt on CPU in fp32 and eval mode, wrapped in
the graph asked for (`jobs.exporting.graph`: padding inside, and for ``uint8-mask`` the
normalisation and argmax too) and exported (`jobs.exporting.formats`). The file is checked as written
(`jobs.exporting.check`); only a file that passes is logged back to MLflow.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

from jobs.common import fs
from jobs.common.model_source import fetch_model
from jobs.exporting import formats
from jobs.exporting.config import ExportConfig
from jobs.exporting.graph import SPECS, build_graph, mask_dtype, padding_multiple

logger = logging.getLogger(__name__)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _input_shape(layout: str, channels: int) -> list[str | int]:
    axes = {"N": "batch", "C": channels, "H": "height", "W": "width"}
    return [axes[a] for a in layout]


def run_export(cfg: ExportConfig) -> dict[str, Any]:
    """Write ``cfg.output`` and return the job's summary; ``summary["passed"]`` says whether
    the file's output is within ``cfg.tolerance`` of PyTorch's (`jobs.exporting.check`). Bad
    input raises ValueError (`ModelSourceError` among them; `GraphRefused` for a graph the
    model cannot take), missing ONNX packages `ExportDependencyError`."""
    from jobs.exporting.check import check_export, sample_input

    start = time.perf_counter()
    formats.quiet_exporter_logs(cfg.log_level)
    if cfg.format == "onnx":
        formats.require_onnx()  # before any download or export
    fetched = fetch_model(
        cfg.model, tracking_uri=cfg.tracking_uri, endpoint_url=fs.s3_endpoint(cfg.s3_endpoint_url)
    )
    resolved, loaded = fetched.resolved, fetched.loaded
    multiple = padding_multiple(loaded.model)
    spec = SPECS[cfg.graph]
    sizes = cfg.sizes(multiple=multiple)
    output = Path(cfg.output).expanduser().resolve()
    if output.is_dir():
        raise ValueError(f"--output {output} is a folder; give a file name, e.g. unet.{cfg.format}")
    source = {
        **resolved.to_dict(),
        "model_uri_given": resolved.uri,
        "checkpoint_sha256": fetched.sha256,
    }
    model = loaded.model.float().eval()
    module = build_graph(loaded, model, cfg.graph)  # refuses a graph the model cannot take
    meta = formats.metadata(loaded, source, cfg.graph)

    logger.info(
        "exporting %s to %s (%s, graph %s)", resolved.uri_resolved, output, cfg.format, cfg.graph
    )
    sample = sample_input(loaded.preprocess, multiple, cfg.graph)
    program = formats.export_program(module, sample, spec)
    if cfg.format == "onnx":
        written = formats.write_onnx(program, output, meta, opset=cfg.opset)
    else:
        written = formats.write_pt2(program, output, meta)
    del program

    checks = check_export(
        formats.RUNNERS[cfg.format](output),
        model,
        loaded.preprocess,
        sizes,
        graph=cfg.graph,
        class_values=loaded.class_map.values,
    )
    diffs = [c["max_abs_diff"] for c in checks]
    max_diff = None if None in diffs else max(diffs)
    passed = max_diff is not None and max_diff <= cfg.tolerance
    sha256 = file_sha256(output)
    summary: dict[str, Any] = {
        "format": cfg.format,
        "output": str(output),
        "bytes": output.stat().st_size,
        "sha256": sha256,
        **source,
        **written,
        "graph": cfg.graph,
        "input": {
            "name": spec.input_name,
            "shape": _input_shape(spec.input_layout, loaded.model_config.in_channels),
            "dtype": spec.input_dtype,
            "any_size": True,
            "spatial_multiple": multiple,
            "mean": list(loaded.preprocess.mean),
            "std": list(loaded.preprocess.std),
        },
        "output_name": spec.output_name,
        "output_dtype": (
            str(mask_dtype(loaded.class_map.values)).removeprefix("torch.")
            if cfg.graph == "uint8-mask"
            else "float32"
        ),
        "class_names": loaded.class_map.names,
        "class_values": loaded.class_map.values,
        "checks": checks,
        "max_abs_diff": max_diff,
        "mask_agreement": min(c["mask_agreement"] for c in checks),
        "tolerance": cfg.tolerance,
        "passed": passed,
        "artifact_uri": None,
        "version_tags": {},
    }
    if not passed:
        if cfg.graph == "uint8-mask":
            what = (
                f"differ from PyTorch's classes at pixels whose logits are {max_diff} apart "
                f"> --tolerance {cfg.tolerance}"
                if max_diff is not None
                else "hold values that are no class's"
            )
        else:
            what = (
                f"differ from PyTorch's by {max_diff} (max abs) > --tolerance {cfg.tolerance}"
                if max_diff is not None
                else "are NaN or inf where PyTorch's are not"
            )
        summary["error"] = (
            f"the exported file's {spec.output_name} {what} on inputs {[c['shape'] for c in checks]}; "
            f"{output} is kept for inspection, nothing was logged to MLflow"
        )
    elif cfg.mlflow_logging and resolved.run_id:
        from jobs.exporting.publish import log_export

        summary.update(
            log_export(
                resolved,
                output,
                fmt=cfg.format,
                graph=cfg.graph,
                max_abs_diff=max_diff or 0.0,
                sha256=sha256,
                artifact_path=cfg.artifact_path,
                tracking_uri=cfg.tracking_uri,
            )
        )
    elif cfg.mlflow_logging and resolved.name:
        logger.warning(
            "%s has no run to log the export to; the file is written but not logged",
            resolved.uri_resolved,
        )
    summary["seconds"] = round(time.perf_counter() - start, 3)
    return summary
