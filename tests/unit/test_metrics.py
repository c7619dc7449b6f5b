import numpy as np
import pytest
import torch

from unet_core.config import IGNORE_INDEX
from unet_core.metrics import ConfusionMatrix

TRUTH = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]])
PRED = np.array([[0, 1, 1, 1], [0, 0, 1, 1], [2, 2, 2, 0], [2, 2, 2, 2]])


def test_hand_computed_iou_and_dice():
    cm = ConfusionMatrix(4)
    cm.update(PRED, TRUTH)
    iou = cm.iou()
    # class 0: tp 3, fp 1, fn 1 -> 3/5; class 1: tp 4, fp 1 -> 4/5; class 2: tp 7, fn 1 -> 7/8
    np.testing.assert_allclose(iou[:3], [3 / 5, 4 / 5, 7 / 8])
    assert np.isnan(iou[3])  # absent from truth and prediction: excluded from the mean
    np.testing.assert_allclose(cm.dice()[:3], [6 / 8, 8 / 9, 14 / 15])
    assert cm.mean_iou() == pytest.approx((3 / 5 + 4 / 5 + 7 / 8) / 3)
    assert cm.pixel_accuracy() == pytest.approx(14 / 16)
    assert cm.pixel_error() == pytest.approx(2 / 16)
    summary = cm.summary(["a", "b", "c", "d"])
    assert summary["per_class"]["d"]["iou"] is None and summary["per_class"]["c"]["support"] == 8


def test_class_in_prediction_only_scores_zero():
    cm = ConfusionMatrix(2)
    cm.update(np.array([1, 0]), np.array([0, 0]))
    assert cm.iou()[1] == 0.0


def test_ignored_pixels_are_skipped():
    truth = TRUTH.copy()
    truth[0, 1] = IGNORE_INDEX
    cm = ConfusionMatrix(3)
    cm.update(PRED, truth)
    assert cm.matrix.sum() == 15 and cm.iou()[0] == pytest.approx(3 / 4)


def test_merge_equals_one_pass_and_torch_agrees():
    a, b = ConfusionMatrix(3), ConfusionMatrix(3)
    a.update(PRED[:2], TRUTH[:2])
    b.update(torch.as_tensor(PRED[2:]), torch.as_tensor(TRUTH[2:]))
    whole = ConfusionMatrix(3)
    whole.update(PRED, TRUTH)
    np.testing.assert_array_equal((a + b).matrix, whole.matrix)
    np.testing.assert_array_equal(
        ConfusionMatrix.from_array(a.to_tensor() + b.to_tensor()).matrix, whole.matrix
    )


def test_out_of_range_predictions_raise():
    with pytest.raises(ValueError, match="class indices"):
        ConfusionMatrix(2).update(np.array([2]), np.array([0]))
