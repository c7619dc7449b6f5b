import torch

from unet_core.config import IGNORE_INDEX
from unet_core.losses import SegmentationLoss, soft_dice_loss


def test_ignored_pixels_change_neither_loss_nor_gradient():
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 8, 8))
    target[:, :4] = IGNORE_INDEX
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    loss_fn = SegmentationLoss(3)
    loss = loss_fn(logits, target)
    loss.backward()
    assert torch.all(logits.grad[:, :, :4] == 0)
    other = logits.detach().clone()
    other[:, :, :4] = torch.randn(2, 3, 4, 8) * 10
    assert torch.allclose(loss_fn(other, target), loss)


def test_all_ignored_batch_gives_zero_not_nan():
    logits = torch.randn(1, 2, 4, 4, requires_grad=True)
    loss = SegmentationLoss(2)(logits, torch.full((1, 4, 4), IGNORE_INDEX))
    loss.backward()
    assert torch.isfinite(loss)


def test_perfect_prediction_has_small_dice_loss():
    target = torch.randint(0, 3, (1, 16, 16))
    logits = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 50
    assert soft_dice_loss(logits, target) < 1e-3


def test_loss_decreases_under_sgd():
    torch.manual_seed(0)
    target = torch.randint(0, 2, (2, 8, 8))
    logits = torch.zeros(2, 2, 8, 8, requires_grad=True)
    opt = torch.optim.SGD([logits], lr=5.0)
    loss_fn = SegmentationLoss(2, ce_weight=1.0, dice_weight=0.5)
    first = loss_fn(logits, target).item()
    for _ in range(50):
        opt.zero_grad()
        loss_fn(logits, target).backward()
        opt.step()
    assert loss_fn(logits, target).item() < first * 0.5
