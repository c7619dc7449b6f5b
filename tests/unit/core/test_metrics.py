import json
import math

import numpy as np
import pytest
import torch

from unet_core.config import IGNORE_INDEX
from unet_core.metrics import ConfusionMatrix

TRUTH = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]], dtype=np.uint8)
PRED = np.array([[0, 1, 1, 1], [0, 0, 1, 1], [2, 2, 2, 0], [2, 2, 2, 2]], dtype=np.uint8)


def test_hand_computed_scores():
    cm = ConfusionMatrix(4)
    cm.update(PRED, TRUTH)
    np.testing.assert_array_equal(
        cm.matrix, [[3, 1, 0, 0], [0, 4, 0, 0], [1, 0, 7, 0], [0, 0, 0, 0]]
    )
    # class 0: tp 3, fp 1, fn 1; class 1: tp 4, fp 1; class 2: tp 7, fn 1; class 3 absent
    iou = cm.iou()
    np.testing.assert_allclose(iou[:3], [3 / 5, 4 / 5, 7 / 8])
    assert np.isnan(iou[3])
    dice = cm.dice()
    np.testing.assert_allclose(dice[:3], [6 / 8, 8 / 9, 14 / 15])
    assert np.isnan(dice[3])
    assert cm.mean_iou() == pytest.approx((3 / 5 + 4 / 5 + 7 / 8) / 3)
    assert cm.mean_dice() == pytest.approx((6 / 8 + 8 / 9 + 14 / 15) / 3)
    assert cm.pixel_accuracy() == pytest.approx(14 / 16)
    assert cm.pixel_error() == pytest.approx(2 / 16)


def test_summary_is_json_ready():
    cm = ConfusionMatrix(4)
    cm.update(PRED, TRUTH)
    summary = cm.summary(["bg", "a", "b", "c"])
    assert json.loads(json.dumps(summary, allow_nan=False)) == summary
    assert summary["per_class"]["c"] == {"iou": None, "dice": None, "support": 0}
    assert summary["per_class"]["b"]["support"] == 8
    assert summary["per_class"]["a"]["iou"] == pytest.approx(0.8)
    assert summary["pixel_error"] == pytest.approx(2 / 16) and summary["pixels"] == 16
    assert list(cm.summary()["per_class"]) == ["0", "1", "2", "3"]
    with pytest.raises(ValueError, match="4 distinct names"):
        cm.summary(["only", "three", "names"])


def test_absent_class_policy():
    cm = ConfusionMatrix(3)
    cm.update(np.array([1, 0, 0]), np.array([0, 0, 0]))
    # class 0: tp 2, fp 0, fn 1 -> 2/3; class 1 predicted only -> 0; class 2 absent -> NaN
    np.testing.assert_allclose(cm.iou(), [2 / 3, 0.0, np.nan])
    assert cm.mean_iou() == pytest.approx(1 / 3)  # NaN excluded, the 0 counts
    empty = ConfusionMatrix(3)
    assert math.isnan(empty.mean_iou()) and math.isnan(empty.pixel_accuracy())
    assert empty.summary()["mean_iou"] is None


def test_ignored_pixels_are_skipped_whatever_is_predicted_there():
    truth = TRUTH.copy()
    truth[0, 1] = IGNORE_INDEX
    pred = PRED.copy()
    pred[0, 1] = 200  # out of range, but ignored
    cm = ConfusionMatrix(3)
    cm.update(pred, truth)
    assert cm.matrix.sum() == 15
    assert cm.iou()[0] == pytest.approx(3 / 4) and cm.iou()[1] == pytest.approx(4 / 4)


def test_merge_equals_one_matrix_over_concatenated_data():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, (4, 9, 7)).astype(np.uint8)
    truth[rng.random(truth.shape) < 0.1] = IGNORE_INDEX
    pred = rng.integers(0, 3, (4, 9, 7)).astype(np.uint8)
    whole = ConfusionMatrix(3)
    whole.update(pred, truth)
    parts = [ConfusionMatrix(3) for _ in range(4)]
    for cm, p, t in zip(parts, pred, truth, strict=True):
        cm.update(p, t)
    np.testing.assert_array_equal((parts[0] + parts[1] + parts[2] + parts[3]).matrix, whole.matrix)
    np.testing.assert_array_equal(sum(parts).matrix, whole.matrix)
    reduced = sum(cm.to_tensor() for cm in parts)  # what all_reduce(SUM) computes
    assert reduced.dtype == torch.int64
    np.testing.assert_array_equal(ConfusionMatrix.from_tensor(reduced).matrix, whole.matrix)
    merged = ConfusionMatrix(3)
    for cm in parts:
        merged.merge(cm)
    np.testing.assert_array_equal(merged.matrix, whole.matrix)
    merged.reset()
    assert merged.matrix.sum() == 0
    with pytest.raises(ValueError, match="3 and 4 classes"):
        whole + ConfusionMatrix(4)


def test_torch_and_numpy_inputs_agree():
    torch.manual_seed(0)
    target = torch.randint(0, 4, (2, 16, 16))
    target[:, :3] = IGNORE_INDEX
    pred = torch.randint(0, 4, (2, 16, 16), dtype=torch.uint8)
    from_numpy, from_torch, mixed = ConfusionMatrix(4), ConfusionMatrix(4), ConfusionMatrix(4)
    from_numpy.update(pred.numpy(), target.numpy())
    from_torch.update(pred, target)
    mixed.update(pred, target.numpy().astype(np.uint8))
    np.testing.assert_array_equal(from_torch.matrix, from_numpy.matrix)
    np.testing.assert_array_equal(mixed.matrix, from_numpy.matrix)
    assert from_torch.matrix.dtype == np.int64 and from_torch.matrix.sum() == 2 * 13 * 16


@pytest.mark.parametrize("as_tensor", [False, True])
def test_out_of_range_values_raise(as_tensor):
    def conv(x):
        return torch.as_tensor(x) if as_tensor else np.asarray(x)

    cm = ConfusionMatrix(2)
    with pytest.raises(ValueError, match=r"class indices in \[0, 2\), got \[2\]"):
        cm.update(conv([0, 2]), conv([0, 1]))
    with pytest.raises(ValueError, match=r"got \[-1\]"):
        cm.update(conv([-1, 0]), conv([0, 1]))
    with pytest.raises(ValueError, match=r"targets .* got \[7\]"):
        cm.update(conv([0, 1]), conv([7, 1]))
    assert cm.matrix.sum() == 0  # a failed update counts nothing


def test_wrong_shapes_and_dtypes_raise():
    cm = ConfusionMatrix(2)
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="argmax"):
        cm.update(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="square"):
        ConfusionMatrix.from_array(np.zeros((2, 3), dtype=np.int64))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors_count_on_the_device():
    target = torch.randint(0, 5, (4, 64, 64), device="cuda")
    target[:, :5] = IGNORE_INDEX
    pred = torch.randint(0, 5, (4, 64, 64), device="cuda")
    on_gpu, on_cpu = ConfusionMatrix(5), ConfusionMatrix(5)
    on_gpu.update(pred, target)
    on_cpu.update(pred.cpu().numpy(), target.cpu().numpy())
    np.testing.assert_array_equal(on_gpu.matrix, on_cpu.matrix)
    with pytest.raises(ValueError, match="predictions"):
        on_gpu.update(pred + 5, target)
