import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unet_core.config import IGNORE_INDEX
from unet_core.losses import (
    SegmentationLoss,
    class_pixel_counts,
    median_frequency_weights,
    soft_dice_loss,
)


def _perfect_logits(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    safe = torch.where(target == IGNORE_INDEX, 0, target)
    return F.one_hot(safe, num_classes).permute(0, 3, 1, 2).float() * 50  # (B, K, H, W)


@pytest.mark.parametrize("class_weights", [None, [1.0, 2.0, 0.5]])
def test_ignored_pixels_change_neither_loss_nor_gradient(class_weights):
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 8, 8))
    target[:, :4] = IGNORE_INDEX
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    loss_fn = SegmentationLoss(3, class_weights=class_weights)
    loss = loss_fn(logits, target)
    loss.backward()
    assert torch.all(logits.grad[:, :, :4] == 0)  # exactly zero, not just small
    assert logits.grad[:, :, 4:].abs().sum() > 0
    other = logits.detach().clone()
    other[:, :, :4] = torch.randn(2, 3, 4, 8) * 10
    assert torch.equal(loss_fn(other, target), loss.detach())


def test_all_ignored_batch_gives_zero_with_a_graph():
    logits = torch.randn(1, 2, 4, 4, requires_grad=True)
    target = torch.full((1, 4, 4), IGNORE_INDEX)
    parts = SegmentationLoss(2).components(logits, target)
    assert parts["ce"].item() == 0 and parts["dice"].item() == 0 and parts["loss"].item() == 0
    assert parts["loss"].requires_grad
    parts["loss"].backward()
    assert torch.all(logits.grad == 0)


def test_cross_entropy_term_matches_torch():
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 5, 7)
    target = torch.randint(0, 3, (2, 5, 7))
    target[0, 0] = IGNORE_INDEX
    weights = torch.tensor([0.2, 1.0, 3.0])
    parts = SegmentationLoss(3, class_weights=weights).components(logits, target)
    expected = F.cross_entropy(logits, target, weight=weights, ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(parts["ce"], expected)


def test_soft_dice_by_hand():
    # One image, two pixels, two classes; probabilities (0.75, 0.25) and (0.5, 0.5).
    p0 = torch.tensor([0.75, 0.5])
    logits = torch.stack([p0.log(), (1 - p0).log()]).view(1, 2, 1, 2)
    target = torch.tensor([[[0, 1]]])
    # class 0: I = 0.75, |P| = 1.25, |Y| = 1 -> dice = (1.5 + 1) / (2.25 + 1)
    # class 1: I = 0.5,  |P| = 0.75, |Y| = 1 -> dice = (1.0 + 1) / (1.75 + 1)
    expected = 1 - ((2.5 / 3.25) + (2.0 / 2.75)) / 2
    assert soft_dice_loss(logits, target, smooth=1.0).item() == pytest.approx(expected, rel=1e-5)
    # An ignored pixel drops out of intersections and cardinalities; class 1 becomes absent.
    target_ignored = torch.tensor([[[0, IGNORE_INDEX]]])
    expected_ignored = 1 - (1.5 + 1) / (1.75 + 1)
    got = soft_dice_loss(logits, target_ignored, smooth=1.0).item()
    assert got == pytest.approx(expected_ignored, rel=1e-5)


def test_perfect_prediction_has_near_zero_dice_loss():
    torch.manual_seed(0)
    target = torch.randint(0, 3, (1, 16, 16))
    assert soft_dice_loss(_perfect_logits(target, 3), target) < 1e-3
    # Classes absent from the target (here 1 and 2 of 4) do not count in the mean.
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, :2] = 3
    assert soft_dice_loss(_perfect_logits(target, 4), target) < 1e-3


def test_wrong_logits_at_ignored_pixels_do_not_spoil_a_perfect_prediction():
    target = torch.randint(0, 2, (2, 6, 6))
    logits = _perfect_logits(target, 2)
    target[:, :, :3] = IGNORE_INDEX
    logits[:, 1, :, :3] = 100.0  # confidently wrong where nobody is looking
    assert SegmentationLoss(2)(logits, target) < 1e-3


def test_loss_decreases_under_sgd():
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 8, 8))
    target[:, 0] = IGNORE_INDEX
    logits = torch.zeros(2, 3, 8, 8, requires_grad=True)
    # Per-pixel logits with a mean-reduced loss: each gets ~1/N of the gradient, hence the big lr.
    opt = torch.optim.SGD([logits], lr=50.0)
    loss_fn = SegmentationLoss(3, ce_weight=1.0, dice_weight=0.5)
    losses = []
    for _ in range(10):
        opt.zero_grad()
        loss = loss_fn(logits, target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False))
    assert losses[-1] < losses[0] * 0.3


def test_float32_under_bf16_autocast():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 8, 8)
    target = torch.randint(0, 3, (1, 8, 8))
    loss_fn = SegmentationLoss(3)
    reference = loss_fn(logits, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        parts = loss_fn.components(logits.bfloat16(), target)
    assert parts["dice"].dtype == torch.float32 and parts["loss"].dtype == torch.float32
    torch.testing.assert_close(parts["loss"], reference, rtol=2e-2, atol=2e-2)


def test_bad_inputs_raise_clear_errors():
    loss_fn = SegmentationLoss(3)
    with pytest.raises(ValueError, match="built for 3"):
        loss_fn(torch.randn(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="spatial size"):
        loss_fn(torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="class_weights"):
        SegmentationLoss(3, class_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="num_classes"):
        SegmentationLoss(1)


@pytest.mark.parametrize("class_weights", [None, [1.0, 2.0, 0.5]])
def test_pixel_weights_of_one_give_the_unweighted_loss(class_weights):
    torch.manual_seed(3)
    target = torch.randint(0, 3, (2, 9, 7))
    target[0, :2] = IGNORE_INDEX
    logits = torch.randn(2, 3, 9, 7)
    loss_fn = SegmentationLoss(3, class_weights=class_weights)
    plain = loss_fn.components(logits, target)
    ones = loss_fn.components(logits, target, torch.ones(2, 9, 7))
    for key in ("ce", "dice", "loss"):
        assert torch.equal(plain[key], ones[key]), key


def test_pixel_weights_make_a_weighted_mean_of_cross_entropy():
    torch.manual_seed(4)
    target = torch.randint(0, 2, (1, 6, 6))
    target[0, 0] = IGNORE_INDEX
    logits = torch.randn(1, 2, 6, 6, requires_grad=True)
    weight = torch.rand(1, 6, 6) * 10
    weight[0, 0] = 100.0  # on ignored pixels: still ignored
    ce = SegmentationLoss(2, dice_weight=0.0)(logits, target, weight)
    per_pixel = F.cross_entropy(logits, target.clamp_max(1), reduction="none")
    valid = (target != IGNORE_INDEX).float()
    expected = (per_pixel * weight * valid).sum() / (weight * valid).sum()
    torch.testing.assert_close(ce, expected)
    ce.backward()
    assert torch.all(logits.grad[:, :, 0] == 0)
    # weight 0 on a row is the same as ignoring it
    zero = torch.ones(1, 6, 6)
    zero[0, 3] = 0
    ignored = target.clone()
    ignored[0, 3] = IGNORE_INDEX
    loss_fn = SegmentationLoss(2, dice_weight=0.0)
    torch.testing.assert_close(loss_fn(logits, target, zero), loss_fn(logits, ignored))
    with pytest.raises(ValueError, match="pixel weights \\(1, 6\\) must have the target's shape"):
        loss_fn(logits, target, torch.ones(1, 6))


def test_median_frequency_weights_by_hand():
    a = np.zeros((4, 4), np.uint8)
    a[0] = 1  # 12 pixels of class 0, 4 of class 1
    a[3, 3] = IGNORE_INDEX  # counts nowhere: 11 of class 0, 15 labelled pixels
    b = np.zeros((4, 4), np.uint8)  # 16 of class 0; class 2 is in no mask
    counts = [class_pixel_counts(m, 3) for m in (a, b)]
    np.testing.assert_array_equal(counts[0][0], [11, 4, 0])
    np.testing.assert_array_equal(counts[0][1], [15, 15, 0])
    np.testing.assert_array_equal(counts[1][1], [16, 0, 0])
    # freq: class 0 27 / 31, class 1 4 / 15 (only a holds it); median of the two = their mean
    f0, f1 = 27 / 31, 4 / 15
    median = (f0 + f1) / 2
    np.testing.assert_allclose(median_frequency_weights(counts), [median / f0, median / f1, 1.0])
    np.testing.assert_allclose(
        median_frequency_weights(counts, power=0.5), [(median / f0) ** 0.5, (median / f1) ** 0.5, 1]
    )
    assert median_frequency_weights(counts, power=0.0) == [1.0, 1.0, 1.0]
    # the rarer class weighs more, the frequent one less, and the loss takes them as they are
    weights = median_frequency_weights(counts)
    assert weights[1] > 1 > weights[0]
    SegmentationLoss(3, class_weights=weights)
    with pytest.raises(ValueError, match="at least one mask|>= 1 mask"):
        median_frequency_weights([])
    with pytest.raises(ValueError, match="power must be >= 0"):
        median_frequency_weights(counts, power=-1)
