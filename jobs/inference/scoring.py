"""The scoring stage of `jobs/evaluate.py`: which class map the truth masks are read with,
and one confusion matrix per image.

Images go through the same decode -> predictor-actor pipeline as segmentation; the last stage
(CPU tasks) reads each truth mask, maps its values to classes with the class map, and returns
the image's confusion matrix. The driver only sums small (K, K) matrices.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa

from jobs.common import fs
from unet_core.classes import CLASS_MAP_FILENAME, ClassMap
from unet_core.data import decode_mask
from unet_core.metrics import ConfusionMatrix, finite_or_none

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
    except OSError as exc:  # FileNotFoundError included
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


def image_figures(key: str, matrix: np.ndarray, names: list[str]) -> dict[str, Any]:
    cm = ConfusionMatrix.from_array(matrix)
    return {
        "image": key,
        "mean_iou": finite_or_none(cm.mean_iou()),
        "mean_dice": finite_or_none(cm.mean_dice()),
        "pixel_accuracy": finite_or_none(cm.pixel_accuracy()),
        "pixel_error": finite_or_none(cm.pixel_error()),
        "iou": {n: finite_or_none(v) for n, v in zip(names, cm.iou(), strict=True)},
    }
