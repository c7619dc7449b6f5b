"""The scoring stage of `jobs/evaluate.py`, the report, and its record in MLflow.

Images go through the same decode -> predictor-actor pipeline as segmentation; the last stage
(CPU tasks) reads each truth mask, maps its values to classes with the class map, and returns
the image's confusion matrix. The driver only sums small (K, K) matrices.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import numpy as np
import pyarrow as pa

from jobs import fs
from unet_core.classes import CLASS_MAP_FILENAME, ClassMap
from unet_core.data import decode_mask
from unet_core.metrics import ConfusionMatrix

logger = logging.getLogger(__name__)

SCORE_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string()),
        pa.field("input", pa.string()),
        pa.field("mask_input", pa.string()),
        pa.field("status", pa.string()),
        pa.field("error", pa.string()),
        pa.field("height", pa.int32()),
        pa.field("width", pa.int32()),
        pa.field("confusion", pa.list_(pa.int64())),  # (K, K) row-major, rows = truth
        pa.field("seconds", pa.float64()),
    ]
)


def load_eval_class_map(
    data: str, class_map_path: str | None, model_class_map: ClassMap, endpoint_url: str | None
) -> ClassMap:
    """--class-map (local or s3://), else <data>/classes.json, else the model's class map."""
    if class_map_path:
        uri = fs.absolute(class_map_path)
    else:
        uri = fs.join(fs.absolute(data), CLASS_MAP_FILENAME)
        if not fs.exists(uri, endpoint_url=endpoint_url):
            logger.info("no %s and no --class-map: using the model's class map", uri)
            return model_class_map
    try:
        text = fs.read_bytes(uri, endpoint_url=endpoint_url).decode("utf-8")
    except (OSError, FileNotFoundError) as exc:
        raise FileNotFoundError(
            f"class map {uri} cannot be read ({exc}); check --class-map"
        ) from exc
    class_map = ClassMap.from_json(text, source=uri)
    if class_map.num_classes != model_class_map.num_classes:
        raise ValueError(
            f"{uri}: {class_map.num_classes} classes ({', '.join(class_map.names)}) but the model "
            f"predicts {model_class_map.num_classes} ({', '.join(model_class_map.names)}); give a "
            "class map with the model's classes in the model's order"
        )
    if class_map.names != model_class_map.names:
        logger.warning(
            "class names differ: data %s, model %s; class i of the model is scored as class i "
            "of the data",
            class_map.names,
            model_class_map.names,
        )
    return class_map


def score_batch(batch: pa.Table, *, class_map: dict, endpoint_url: str | None = None) -> pa.Table:
    """Ray Data task UDF: predictions + truth mask URIs -> one confusion matrix per image."""
    cmap = ClassMap.from_dict(class_map)
    k = cmap.num_classes
    rows = batch.select(
        ["key", "input", "mask_input", "error", "height", "width", "mask", "seconds"]
    ).to_pylist()
    out = []
    for row in rows:
        start = time.perf_counter()
        error, confusion = row["error"], None
        if error is None:
            try:
                truth = decode_mask(
                    fs.read_bytes(row["mask_input"], endpoint_url=endpoint_url),
                    cmap,
                    source=row["mask_input"],
                )
                h, w = row["height"], row["width"]
                if truth.shape != (h, w):
                    raise ValueError(
                        f"{row['mask_input']}: mask is {truth.shape[1]}x{truth.shape[0]} but its "
                        f"image {row['input']} is {w}x{h}; masks must match their images"
                    )
                pred = np.frombuffer(row["mask"], dtype=np.uint8).reshape(h, w)
                cm = ConfusionMatrix(k)
                cm.update(pred, truth)
                confusion = cm.matrix.reshape(-1).tolist()
            except Exception as exc:  # unreadable or mismatched truth: a row error
                error = str(exc) if isinstance(exc, ValueError) else f"{row['mask_input']}: {exc}"
        out.append(
            {
                "key": row["key"],
                "input": row["input"],
                "mask_input": row["mask_input"],
                "status": "ok" if error is None else "failed",
                "error": error,
                "height": row["height"] or None,
                "width": row["width"] or None,
                "confusion": confusion,
                "seconds": (row["seconds"] or 0.0) + time.perf_counter() - start,
            }
        )
    return pa.Table.from_pylist(out, schema=SCORE_SCHEMA)


def _clean(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def image_figures(key: str, matrix: np.ndarray, names: list[str]) -> dict[str, Any]:
    cm = ConfusionMatrix.from_array(matrix)
    return {
        "image": key,
        "mean_iou": _clean(cm.mean_iou()),
        "mean_dice": _clean(cm.mean_dice()),
        "pixel_accuracy": _clean(cm.pixel_accuracy()),
        "pixel_error": _clean(cm.pixel_error()),
        "iou": {n: _clean(v) for n, v in zip(names, cm.iou(), strict=True)},
    }


def metric_name(text: str) -> str:
    """A class name made safe as an MLflow metric / tag key."""
    return re.sub(r"[^A-Za-z0-9_\-.]", "_", text)


def log_evaluation(
    report: dict[str, Any],
    *,
    tracking_uri: str,
    experiment: str,
    model_name: str | None,
    model_version: str | None,
) -> str:
    """An evaluation run (metrics, params, evaluation.json) linked to the model version by
    tags both ways: run tags model_name/model_version, version tags eval_run_id and figures."""
    import mlflow

    from jobs.model_source import mlflow_client

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    label = f"{model_name}-v{model_version}" if model_name else "checkpoint"
    metrics = {
        "mean_iou": report["mean_iou"],
        "mean_dice": report["mean_dice"],
        "pixel_accuracy": report["pixel_accuracy"],
        "pixel_error": report["pixel_error"],
        **{f"iou_{metric_name(n)}": c["iou"] for n, c in report["per_class"].items()},
        **{f"dice_{metric_name(n)}": c["dice"] for n, c in report["per_class"].items()},
    }
    with mlflow.start_run(run_name=f"evaluate-{label}") as run:
        mlflow.set_tags(
            {
                "job": "evaluate",
                "model_uri": report["model_uri"],
                "model_name": model_name or "",
                "model_version": model_version or "",
                "data": report["data"],
            }
        )
        mlflow.log_params(
            {"images": report["ok"], "failed": report["failed"], "data": report["data"]}
        )
        mlflow.log_metrics({k: v for k, v in metrics.items() if v is not None})
        mlflow.log_dict(report, "evaluation.json")
        run_id = run.info.run_id
    if model_name and model_version:
        client, _ = mlflow_client(tracking_uri)
        tags = {
            "eval_run_id": run_id,
            "eval_data": report["data"],
            "eval_mean_iou": report["mean_iou"],
            "eval_pixel_accuracy": report["pixel_accuracy"],
            "eval_pixel_error": report["pixel_error"],
        }
        for key, value in tags.items():
            client.set_model_version_tag(model_name, model_version, key, str(value))
    logger.info("evaluation logged to MLflow run %s", run_id)
    return run_id
