"""The step loops read the loss from the device once per epoch, and get the same numbers as a
loop that reads it every step."""

import copy
import sys
from pathlib import Path

import pytest
import torch

from tests.support import REPO_ROOT
from unet_core.engine import evaluate, train_one_epoch
from unet_core.losses import SegmentationLoss
from unet_core.model import UNet

NUM_CLASSES = 3


def batches(n: int, *, batch_size: int = 2, size: int = 16, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(batch_size + i % 2, 3, size, size, generator=g),  # uneven batch sizes
            torch.randint(0, NUM_CLASSES, (batch_size + i % 2, size, size), generator=g),
        )
        for i in range(n)
    ]


def tiny_model() -> UNet:
    torch.manual_seed(0)
    return UNet(3, NUM_CLASSES, base_width=4, depth=2).to(memory_format=torch.channels_last)


def per_step_reference(model, data, optimizer, loss_fn) -> float:
    """The loop as it was: loss.item() after every step, summed per image in Python floats."""
    model.train()
    loss_sum, images = 0.0, 0
    for x, y in data:
        loss = loss_fn(model(x.contiguous(memory_format=torch.channels_last)).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        loss_sum += loss.item() * x.shape[0]
        images += x.shape[0]
    return loss_sum / images


@pytest.fixture
def count_reads(monkeypatch):
    """Counts tensor-to-Python reads made by this project's code (on a GPU each one waits for
    the device). Reads inside torch are left out: AdamW reads its step counter, a CPU tensor
    even when the weights are on a GPU, so that read never waits."""
    calls = {"n": 0}
    for name in ("item", "__float__", "__int__", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            caller = Path(sys._getframe(1).f_code.co_filename).resolve()
            if caller.is_relative_to(REPO_ROOT / "unet_core"):
                calls["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return calls


def test_train_loss_matches_the_mean_of_per_step_losses():
    torch.set_num_threads(1)
    data = batches(3)
    loss_fn = SegmentationLoss(NUM_CLASSES)
    model = tiny_model()
    reference_model = copy.deepcopy(model)
    stats = train_one_epoch(
        model,
        data,
        torch.optim.AdamW(model.parameters(), lr=1e-2),
        loss_fn,
        device="cpu",
        max_grad_norm=1.0,
    )
    expected = per_step_reference(
        reference_model, data, torch.optim.AdamW(reference_model.parameters(), lr=1e-2), loss_fn
    )
    assert stats.images == sum(len(x) for x, _ in data)
    assert stats.loss == pytest.approx(expected, rel=1e-12, abs=0)
    for a, b in zip(model.parameters(), reference_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_train_one_epoch_reads_the_device_once(count_reads):
    model = tiny_model()
    stats = train_one_epoch(
        model,
        batches(5),
        torch.optim.AdamW(model.parameters(), lr=1e-3),
        SegmentationLoss(NUM_CLASSES),
        device="cpu",
        max_grad_norm=1.0,
    )
    assert stats.images == 12
    assert count_reads["n"] <= 1


def test_evaluate_loss_sum_matches_per_batch_items(count_reads):
    data = batches(4, seed=1)
    model, loss_fn = tiny_model(), SegmentationLoss(NUM_CLASSES)
    stats = evaluate(model, data, loss_fn, num_classes=NUM_CLASSES, device="cpu")
    assert count_reads["n"] <= 1  # the loss sum, read once (the confusion counts go via NumPy)
    with torch.inference_mode():
        expected = sum(loss_fn(model(x).float(), y).item() * len(x) for x, y in data)
    assert stats.loss_sum == pytest.approx(expected, rel=1e-12, abs=0)
    assert stats.images == sum(len(x) for x, _ in data)
    assert stats.confusion.matrix.sum() == sum(y.numel() for _, y in data)
