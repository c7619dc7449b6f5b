"""The adapted Rand error in jobs/evaluate.py's scoring stage, without Ray: per image on
hand-made masks with answers worked out by hand (notation of tests/unit/core/test_rand_error.py:
P = sum n_ij^2 - n, T = sum t_i^2 - n, S = sum s_j^2 - n over the n truth pixels of the class),
the class name checked against the class map, and the driver's mean over images."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from jobs.evaluating.job import Tally
from jobs.evaluating.scoring import (
    Scorer,
    image_figures,
    rand_error_class_index,
    rand_figures,
    report_schema,
)
from unet_core.classes import ClassMap
from unet_core.config import IGNORE_INDEX

MEMBRANE, CELL, IGN = 0, 1, IGNORE_INDEX
NAMES = ["membrane", "cell"]


def test_a_merge_of_two_cells_halves_precision():
    """Two truth cells of 2 px split by a membrane pixel; the prediction fills the membrane:
    one segment over both (n = 4, P = 4, T = 4, S = 12): precision 1/3, recall 1, error 0.5."""
    truth = np.array([[CELL, CELL, MEMBRANE, CELL, CELL]])
    pred = np.full_like(truth, CELL)
    assert rand_figures(truth, pred, CELL) == pytest.approx(
        {"rand_error": 0.5, "rand_precision": 1 / 3, "rand_recall": 1.0}
    )
    assert rand_figures(truth, truth, CELL) == {
        "rand_error": 0.0,
        "rand_precision": 1.0,
        "rand_recall": 1.0,
    }


def test_a_split_cell_lowers_recall():
    """Two truth cells of 4 px (rows 0 and 2); the prediction cuts row 0 with one membrane pixel
    into 2 + (1 predicted membrane) + 1: n_ij = 2, 1, 1, 4, so P = 22 - 8 = 14, T = 32 - 8 = 24,
    S = 22 - 8 = 14: precision 1, recall 7/12, error 1 - 28/38 = 5/19."""
    truth = np.array([[1, 1, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1]])
    pred = np.array([[1, 1, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1]])
    assert rand_figures(truth, pred, CELL) == pytest.approx(
        {"rand_error": 5 / 19, "rand_precision": 1.0, "rand_recall": 7 / 12}
    )


def test_ignored_truth_pixels_are_left_out_of_both_segmentations():
    """The truth cells are separated by an ignored pixel, not membrane: a prediction of cell
    there does not join the two predicted regions (without the rule: the merge above, 0.5),
    and whatever is predicted under ignored pixels changes nothing."""
    truth = np.array([[CELL, CELL, IGN, CELL, CELL]])
    for there in (CELL, MEMBRANE):
        pred = np.array([[CELL, CELL, there, CELL, CELL]])
        assert rand_figures(truth, pred, CELL) == {
            "rand_error": 0.0,
            "rand_precision": 1.0,
            "rand_recall": 1.0,
        }


def test_a_diagonal_membrane_separates_two_cells():
    """4-connectivity: two truth cells of 3 px meet only at a corner across a diagonal line of
    membrane (one segment with 8-connectivity: error 0); the prediction fills the line, one
    segment of 6 (n = 6, P = 12, T = 12, S = 30): precision 2/5, recall 1, error 3/7."""
    truth = np.array([[1, 1, 0], [1, 0, 1], [0, 1, 1]])
    pred = np.ones_like(truth)
    assert rand_figures(truth, pred, CELL) == pytest.approx(
        {"rand_error": 3 / 7, "rand_precision": 2 / 5, "rand_recall": 1.0}
    )
    # one-pixel segments only: no pixel pairs in either, 0 / 0 -> None (not NaN)
    assert rand_figures(np.eye(2, dtype=int), np.eye(2, dtype=int), CELL)["rand_error"] is None


def test_no_truth_pixel_of_the_class_is_undefined():
    truth = np.zeros((3, 3), dtype=np.uint8)
    assert rand_figures(truth, np.ones_like(truth), CELL) == {
        "rand_error": None,
        "rand_precision": None,
        "rand_recall": None,
    }


def test_the_class_is_checked_against_the_class_map():
    cmap = ClassMap.binary()
    assert rand_error_class_index(cmap, None) is None
    assert rand_error_class_index(cmap, cmap.names[1]) == 1
    with pytest.raises(ValueError, match="'cells' .*" + ", ".join(cmap.names)):
        rand_error_class_index(cmap, "cells")


def _batch(tmp_path, truth_values: np.ndarray, pred: np.ndarray) -> pa.Table:
    """A batch as the predictor hands it to the scorer: the truth mask is a file (pixel values
    of the class map), the prediction class indices."""
    mask_file = tmp_path / "s0.png"
    Image.fromarray(truth_values.astype(np.uint8)).save(mask_file)
    h, w = pred.shape
    row = {
        "key": "s0",
        "input": str(tmp_path / "s0.tif"),
        "mask_input": str(mask_file),
        "error": None,
        "height": h,
        "width": w,
        "mask": pred.astype(np.uint8).tobytes(),
        "seconds": 0.0,
    }
    return pa.Table.from_pylist([row])


def test_the_scorer_adds_the_rand_columns_to_the_row(tmp_path):
    """An ISBI-like map (0 = membrane, 255 = cell, 128 ignored): the merge case above, then the
    ignored-pixel case, read from a mask file; without a class the columns are null."""
    cmap = {
        "classes": [{"name": "membrane", "value": 0}, {"name": "cell", "value": 255}],
        "ignore_values": [128],
    }
    pred = np.array([[1, 1, 1, 1, 1]])
    merged = _batch(tmp_path, np.array([[255, 255, 0, 255, 255]]), pred)
    row = Scorer(cmap, rand_class=1).rows(merged).to_pylist()[0]
    assert row["status"] == "ok", row["error"]
    assert (row["rand_error"], row["rand_precision"], row["rand_recall"]) == pytest.approx(
        (0.5, 1 / 3, 1.0)
    )
    assert row["pixel_accuracy"] == pytest.approx(0.8)  # the pixel figures as before
    ignored = _batch(tmp_path, np.array([[255, 255, 128, 255, 255]]), pred)
    row = Scorer(cmap, rand_class=1).rows(ignored).to_pylist()[0]
    assert (row["rand_error"], row["pixel_accuracy"], row["pixels"]) == (0.0, 1.0, 4)
    row = Scorer(cmap).rows(merged).to_pylist()[0]
    assert row["status"] == "ok" and row["rand_error"] is None and row["rand_recall"] is None


def _scored(values: list[float | None]) -> pa.Table:
    """ok rows whose rand_error is ``values[i]`` (precision 1, recall = error / 2)."""
    matrix = np.array([[1, 0], [0, 1]])
    rows = [
        {
            "key": f"k{i}",
            "status": "ok",
            **image_figures(matrix, NAMES),
            "rand_error": v,
            "rand_precision": None if v is None else 1.0,
            "rand_recall": None if v is None else v / 2,
        }
        for i, v in enumerate(values)
    ]
    return pa.Table.from_pylist(rows, schema=report_schema(NAMES))


def test_the_tally_means_the_defined_per_image_values_in_any_order():
    values = [0.1, 0.2, None, 0.3, 0.7]
    forward, backward = Tally(2), Tally(2)
    forward.add(_scored(values[:2]))
    forward.add(_scored(values[2:]))
    backward.add(_scored(values[::-1]))
    means = forward.rand_means()
    assert means == backward.rand_means()  # exactly: the sums are exact
    assert means["adapted_rand_error"] == pytest.approx(1.3 / 4)
    assert means["adapted_rand_precision"] == 1.0
    assert means["adapted_rand_recall"] == pytest.approx(1.3 / 8)
    assert means["adapted_rand_images"] == 4
    assert forward.ok == 5
    assert Tally(2).rand_means() == {
        "adapted_rand_error": None,
        "adapted_rand_precision": None,
        "adapted_rand_recall": None,
        "adapted_rand_images": 0,
    }
