"""The adapted Rand error on hand-made label images with answers worked out by hand.

Notation: n pixels kept (truth label != 0), n_ij pixels in truth segment i and predicted
segment j, t_i and s_j the segment sizes. P = sum n_ij^2 - n (pairs together in both, twice),
T = sum t_i^2 - n, S = sum s_j^2 - n; precision = P / S, recall = P / T,
error = 1 - 2P / (S + T).
"""

import numpy as np
import pytest

from unet_core.config import IGNORE_INDEX
from unet_core.metrics import adapted_rand_error, segment_labels


def test_identical_segmentations_score_zero():
    truth = np.array([[1, 1, 2, 2], [3, 3, 2, 2]])
    assert adapted_rand_error(truth, truth) == (0.0, 1.0, 1.0)
    relabelled = np.array([[7, 7, 0, 0], [9, 9, 0, 0]])  # names do not matter, 0 included
    assert adapted_rand_error(truth, relabelled) == (0.0, 1.0, 1.0)


def test_a_split_segment_lowers_recall_only():
    """truth: two rows of 4 (t = 4, 4); prediction splits the first row in halves (s = 2, 2, 4).
    n = 8, n_ij = 2, 2, 4: P = 24 - 8 = 16, T = 32 - 8 = 24, S = 24 - 8 = 16.
    precision 16/16 = 1, recall 16/24 = 2/3, error 1 - 32/40 = 0.2."""
    truth = np.array([[1, 1, 1, 1], [2, 2, 2, 2]])
    pred = np.array([[1, 1, 3, 3], [2, 2, 2, 2]])
    error, precision, recall = adapted_rand_error(truth, pred)
    assert error == pytest.approx(0.2) and precision == 1.0 and recall == pytest.approx(2 / 3)


def test_a_merged_segment_lowers_precision_only():
    """truth: two segments of 2 (t = 2, 2); prediction merges them (s = 4). n = 4:
    P = 8 - 4 = 4, T = 8 - 4 = 4, S = 16 - 4 = 12: precision 1/3, recall 1, error 1 - 8/16."""
    truth = np.array([[1, 1, 2, 2]])
    pred = np.array([[5, 5, 5, 5]])
    error, precision, recall = adapted_rand_error(truth, pred)
    assert error == pytest.approx(0.5) and precision == pytest.approx(1 / 3) and recall == 1.0
    # the same table with truth and prediction swapped swaps precision and recall
    error2, precision2, recall2 = adapted_rand_error(pred, truth)
    assert (error2, precision2, recall2) == pytest.approx((0.5, 1.0, 1 / 3))


def test_all_background_prediction_and_ignored_truth_background():
    """truth background (0) is left out whatever the prediction says there; an all-background
    prediction is one segment over the two cells: the merge case above, error 0.5."""
    truth = np.array([[1, 1, 0], [2, 2, 0]])
    pred = np.zeros_like(truth)
    assert adapted_rand_error(truth, pred) == pytest.approx((0.5, 1 / 3, 1.0))
    noisy = pred.copy()
    noisy[:, 2] = [4, 9]  # under truth background: no effect
    assert adapted_rand_error(truth, noisy) == adapted_rand_error(truth, pred)


def test_unequal_segments():
    """truth t = (3, 1) over n = 4; prediction s = (2, 2) with n_ij = (2, 1 | 0, 1):
    P = 4 + 1 + 1 - 4 = 2, T = 9 + 1 - 4 = 6, S = 4 + 4 - 4 = 4:
    precision 1/2, recall 1/3, error 1 - 4/10 = 0.6."""
    truth = np.array([[1, 1, 1, 2]])
    pred = np.array([[1, 1, 2, 2]])
    assert adapted_rand_error(truth, pred) == pytest.approx((0.6, 0.5, 1 / 3))


def test_segment_labels_of_class_masks():
    """Cells (class 1) separated by membrane (class 0); ignored pixels belong to no segment."""
    mask = np.array(
        [
            [1, 1, 0, 1],
            [1, 1, 0, 1],
            [0, 0, 0, 0],
            [1, IGNORE_INDEX, 1, 1],
        ],
        np.uint8,
    )
    labels = segment_labels(mask, 1)
    np.testing.assert_array_equal(labels, [[1, 1, 0, 2], [1, 1, 0, 2], [0, 0, 0, 0], [3, 0, 4, 4]])
    assert labels.dtype == np.int32
    pred = mask.copy()
    pred[:2, 2] = 1  # the membrane between the first two cells is missed: one merged cell
    error, precision, recall = adapted_rand_error(labels, segment_labels(pred, 1))
    assert recall == 1.0 and precision < 1.0 and 0 < error < 1


def test_bad_inputs():
    with pytest.raises(ValueError, match="differ in shape"):
        adapted_rand_error(np.zeros((2, 2), int), np.zeros((2, 3), int))
    with pytest.raises(TypeError, match="integer segment labels"):
        adapted_rand_error(np.zeros((2, 2), int), np.zeros((2, 2)))
    error, precision, recall = adapted_rand_error(np.zeros((2, 2), int), np.ones((2, 2), int))
    assert np.isnan(error) and np.isnan(precision) and np.isnan(recall)
