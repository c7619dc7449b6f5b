"""Evaluate a model on a labelled set: per-class IoU and Dice, mean IoU, pixel accuracy/error.

    python jobs/evaluate.py --model models:/unet@champion --data ../shared/data/isbi2012/train \\
        --class-map isbi_classes.json --log-to-mlflow

Runs the segmentation pipeline (decode tasks -> predictor actors) over images/ of the root,
then scores each prediction against its mask (paired by relative path and stem) in CPU tasks.
Figures over the whole set come from the summed confusion matrix (absent classes are left out
of the means); per-image figures are listed too. Pixel error = 1 - pixel accuracy, the U-Net
paper's ISBI 2012 metric. The last line of stdout is the JSON report.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python jobs/evaluate.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from jobs import fs
from jobs.batch_pipeline import (
    Progress,
    build_prediction_dataset,
    cpu_stage_args,
    init_ray,
    resolve_endpoint,
    setup_logging,
)
from jobs.evaluation import image_figures, load_eval_class_map, log_evaluation, score_batch
from jobs.image_io import estimate_image_bytes
from jobs.model_source import (
    ModelSourceError,
    checkpoint_digest,
    default_tracking_uri,
    fetch_checkpoint_bytes,
    resolve_model,
)
from jobs.ray_setup import quiet_ray_logs
from jobs.segment_config import EvaluateConfig, parse_config
from unet_core.checkpoint import load_checkpoint
from unet_core.data import PairingError, pair_images_and_masks
from unet_core.metrics import ConfusionMatrix

logger = logging.getLogger("jobs.evaluate")


def run_evaluation(cfg: EvaluateConfig) -> dict[str, Any]:
    """Score the model on every pair under --data; returns the report."""
    started = time.perf_counter()
    endpoint = resolve_endpoint(cfg)
    data = fs.absolute(cfg.data)
    resolved = resolve_model(cfg.model, tracking_uri=cfg.tracking_uri)
    checkpoint = fetch_checkpoint_bytes(
        resolved, tracking_uri=cfg.tracking_uri, endpoint_url=endpoint
    )
    loaded = load_checkpoint(checkpoint)
    class_map = load_eval_class_map(data, cfg.class_map, loaded.class_map, endpoint)
    pairs = pair_images_and_masks(data, lister=fs.make_lister(data, endpoint_url=endpoint))
    rows = [
        {"key": p.key, "input": fs.join(data, p.image), "mask_input": fs.join(data, p.mask)}
        for p in pairs
    ]
    logger.info("%d image/mask pairs under %s; model %s", len(rows), data, resolved.uri_resolved)

    import ray

    started_ray = init_ray(cfg)
    quiet_ray_logs(cfg.log_level)  # our progress lines replace Ray Data's bars
    total = ConfusionMatrix(class_map.num_classes)
    images: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    pipeline_start = time.perf_counter()
    try:
        ds = build_prediction_dataset(
            rows,
            cfg=cfg,
            checkpoint_ref=ray.put(checkpoint),
            channels=loaded.preprocess.channels,
            endpoint_url=endpoint,
            image_bytes=estimate_image_bytes(
                [r["input"] for r in rows[:3]],
                channels=loaded.preprocess.channels,
                endpoint_url=endpoint,
            ),
        )
        ds = ds.map_batches(
            score_batch,
            fn_kwargs={"class_map": class_map.to_dict(), "endpoint_url": endpoint},
            batch_format="pyarrow",
            batch_size=cfg.rows_per_call,
            **cpu_stage_args(cfg, rows=len(rows), batch_size=cfg.rows_per_call),
        )
        progress = Progress(total=len(rows), every=cfg.progress_seconds, label="evaluate")
        k = class_map.num_classes
        for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            batch_failed = 0
            for row in table.to_pylist():
                if row["status"] != "ok":
                    batch_failed += 1
                    failures.append({"image": row["key"], "error": row["error"]})
                    continue
                matrix = np.asarray(row["confusion"], dtype=np.int64).reshape(k, k)
                total.matrix += matrix
                images.append(image_figures(row["key"], matrix, class_map.names))
            progress.update(table.num_rows, batch_failed)
        pipeline_seconds = time.perf_counter() - pipeline_start
    finally:
        if started_ray:
            ray.shutdown()

    images.sort(key=lambda r: r["image"])
    summary = total.summary(class_map.names)
    report = {
        **summary,
        "images_evaluated": len(images),
        "total": len(rows),
        "ok": len(images),
        "failed": len(failures),
        "failed_fraction": len(failures) / max(1, len(rows)),
        "failures": sorted(failures, key=lambda r: r["image"]),
        "confusion_matrix": total.matrix.tolist(),
        "class_names": class_map.names,
        "data": data,
        **resolved.to_dict(),
        "checkpoint_sha256": checkpoint_digest(checkpoint),
        "images_per_second": len(rows) / pipeline_seconds if pipeline_seconds else 0.0,
        "seconds": round(time.perf_counter() - started, 3),
        "images": images,
    }
    if cfg.log_to_mlflow:
        report["mlflow_run_id"] = log_evaluation(
            report,
            tracking_uri=default_tracking_uri(cfg.tracking_uri),
            experiment=cfg.experiment,
            model_name=resolved.name,
            model_version=resolved.version,
        )
    if cfg.report:
        fs.write_bytes_atomic(
            *fs.resolve(cfg.report, endpoint_url=endpoint), json.dumps(report, indent=2).encode()
        )
    return report


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(
        EvaluateConfig,
        argv,
        prog="jobs/evaluate.py",
        description=" ".join(__doc__.split("\n\n")[0:3:2]).replace("\n", " "),
    )
    setup_logging(cfg.log_level)
    try:
        report = run_evaluation(cfg)
    except (ModelSourceError, PairingError, ValueError, FileNotFoundError) as exc:
        logger.error("%s", exc)
        print(json.dumps({"error": str(exc)}), flush=True)
        return 2
    fmt = lambda x: "n/a" if x is None else f"{x:.4f}"  # noqa: E731
    for name, figures in report["per_class"].items():
        logger.info(
            "  %-20s IoU %s  Dice %s  (%d pixels)",
            name,
            fmt(figures["iou"]),
            fmt(figures["dice"]),
            figures["support"],
        )
    logger.info(
        "%d images: mean IoU %s, pixel accuracy %s, pixel error %s (%d failed)",
        report["ok"],
        fmt(report["mean_iou"]),
        fmt(report["pixel_accuracy"]),
        fmt(report["pixel_error"]),
        report["failed"],
    )
    too_many = report["failed"] > 0 and report["failed_fraction"] > cfg.max_failed_fraction
    sys.stdout.flush()
    print(json.dumps(report), flush=True)
    return 1 if too_many else 0


if __name__ == "__main__":
    sys.exit(main())
