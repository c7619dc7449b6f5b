"""The scoring stage of `jobs/evaluate.py`: which class map the truth masks are read with, and
one row per image with its confusion matrix and figures (with --rand-error-class, its adapted
Rand error too).

Images go through the same pipeline as segmentation; its last stage (`Scorer`, in the fused
CPU actors or in CPU tasks after GPU actors) reads each truth mask (`jobs.common.pairs`, the
reader of every labelled pair), counts the prediction against it
(`jobs.common.pair_scores.image_confusion`, the alias gate's computation too) and returns the
image's row (`report_schema`): these rows are the --report file as they are. The driver only
sums their small (K, K) matrices and writes the rows out batch by batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from jobs.common import fs
from jobs.common.pair_scores import image_confusion
from jobs.common.pairs import read_mask
from unet_core.classes import CLASS_MAP_FILENAME, ClassMap
from unet_core.config import IGNORE_INDEX
from unet_core.image_files import DEFAULT_OPTIONS, DecodeOptions
from unet_core.metrics import ConfusionMatrix, adapted_rand_error, finite_or_none, segment_labels

logger = logging.getLogger(__name__)


def report_schema(class_names: Sequence[str]) -> pa.Schema:
    """Columns of a scored image (and of the --report Parquet file): figures are null for a
    failed image; ``iou``, ``dice`` and ``support`` are structs with one field per class."""
    per_class = pa.struct([(n, pa.float64()) for n in class_names])
    return pa.schema(
        [
            pa.field("key", pa.string()),  # relative path of the image under images/, no suffix
            pa.field("input", pa.string()),
            pa.field("mask_input", pa.string()),
            pa.field("status", pa.string()),  # ok | failed
            pa.field("error", pa.string()),
            pa.field("height", pa.int32()),
            pa.field("width", pa.int32()),
            pa.field("pixels", pa.int64()),  # counted pixels (ignored ones left out)
            pa.field("mean_iou", pa.float64()),  # over the classes present in truth or prediction
            pa.field("mean_dice", pa.float64()),
            pa.field("pixel_accuracy", pa.float64()),
            pa.field("pixel_error", pa.float64()),
            # adapted Rand error of --rand-error-class (null without it, or with no truth segment)
            pa.field("rand_error", pa.float64()),
            pa.field("rand_precision", pa.float64()),
            pa.field("rand_recall", pa.float64()),
            pa.field("iou", per_class),  # null for a class absent from truth and prediction
            pa.field("dice", per_class),
            pa.field("support", pa.struct([(n, pa.int64()) for n in class_names])),  # truth px
            pa.field("confusion", pa.list_(pa.int64())),  # (K, K) row-major, rows = truth
            pa.field("seconds", pa.float64()),  # read + decode + predict share + scoring
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


def rand_error_class_index(class_map: ClassMap, name: str | None) -> int | None:
    """The index of --rand-error-class ``name`` in ``class_map`` (None when not given);
    ValueError naming the classes when it is none of them."""
    if name is None:
        return None
    if name not in class_map.names:
        raise ValueError(
            f"--rand-error-class {name!r} is not a class of the class map the masks are read "
            f"with (--class-map, else <data>/classes.json, else the model's); its classes are "
            f"{', '.join(class_map.names)}: give one of them (ISBI 2012: the cells)"
        )
    return class_map.names.index(name)


class Scorer:
    """The last stage of `jobs/evaluate.py` (a `jobs.inference.pipeline.Sink`): predictions +
    truth mask URIs -> one `report_schema` row per image."""

    def __init__(
        self,
        class_map: dict,
        endpoint_url: str | None = None,
        decode: DecodeOptions = DEFAULT_OPTIONS,
        rand_class: int | None = None,
    ) -> None:
        self.cmap = ClassMap.from_dict(class_map)
        self.endpoint_url = endpoint_url
        self.decode = decode  # truth masks are decoded like their images (EXIF, pixel limit)
        self.rand_class = rand_class  # class index of --rand-error-class, or None

    def rows(self, batch: pa.Table) -> pa.Table:
        rows = batch.select(
            ["key", "input", "mask_input", "error", "height", "width", "mask", "seconds"]
        ).to_pylist()
        out = []
        for row in rows:
            start = time.perf_counter()
            error, figures = row["error"], {}
            if error is None:
                try:
                    figures = _score_one(
                        row, self.cmap, self.endpoint_url, self.decode, self.rand_class
                    )
                except Exception as exc:  # unreadable or mismatched truth: a row error
                    named = isinstance(exc, (ValueError, OSError))  # these name the file
                    error = str(exc) if named else f"{row['mask_input']}: {exc}"
            out.append(
                {
                    "key": row["key"],
                    "input": row["input"],
                    "mask_input": row["mask_input"],
                    "status": "ok" if error is None else "failed",
                    "error": error,
                    "height": row["height"] or None,
                    "width": row["width"] or None,
                    **figures,
                    "seconds": (row["seconds"] or 0.0) + time.perf_counter() - start,
                }
            )
        return pa.Table.from_pylist(out, schema=report_schema(self.cmap.names))

    def finish(self, tables: list[pa.Table]) -> pa.Table:
        return pa.concat_tables(tables)


def _score_one(
    row: dict[str, Any],
    cmap: ClassMap,
    endpoint_url: str | None,
    decode: DecodeOptions,
    rand_class: int | None,
) -> dict[str, Any]:
    """The figures of one predicted image against its truth mask; ValueError when they differ
    in size."""
    truth = read_mask(row["mask_input"], cmap, endpoint_url=endpoint_url, decode=decode)
    pred = np.frombuffer(row["mask"], dtype=np.uint8).reshape(row["height"], row["width"])
    matrix = image_confusion(
        pred, truth, cmap.num_classes, mask_uri=row["mask_input"], image_uri=row["input"]
    )
    figures = image_figures(matrix, cmap.names)
    if rand_class is not None:
        figures.update(rand_figures(truth, pred, rand_class))
    return figures


def rand_figures(truth: np.ndarray, pred: np.ndarray, object_class: int) -> dict[str, Any]:
    """The adapted Rand error of one image, as `report_schema` columns (None where undefined,
    e.g. no truth pixel of the class). Its segments are the 4-connected regions of
    ``object_class`` (`segment_labels`) in the truth and in the prediction (class indices);
    truth pixels that are ignored (IGNORE_INDEX) are left out of both, so a predicted region
    is not joined across them."""
    truth, pred = np.asarray(truth), np.asarray(pred)
    pred = np.where(truth == IGNORE_INDEX, IGNORE_INDEX, pred)  # not the class: no segment
    error, precision, recall = adapted_rand_error(
        segment_labels(truth, object_class), segment_labels(pred, object_class)
    )
    return {
        "rand_error": finite_or_none(error),
        "rand_precision": finite_or_none(precision),
        "rand_recall": finite_or_none(recall),
    }


def image_figures(matrix: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """The figures of one image's (K, K) confusion matrix, as `report_schema` columns: computed
    by `ConfusionMatrix.summary`, like those of the whole set (NaN -> None)."""
    summary = ConfusionMatrix.from_array(matrix).summary(list(names))
    per_class = summary.pop("per_class")
    return {
        **summary,
        **{part: {n: c[part] for n, c in per_class.items()} for part in ("iou", "dice", "support")},
        "confusion": np.asarray(matrix, dtype=np.int64).reshape(-1).tolist(),
    }
