"""--samples-per-epoch and border weights in the workers' data stage (jobs/training/batches.py):
the epoch's crops depend on (seed, epoch) only, not on the number of workers; every rank gets
the same count; the weight maps are those of each augmented crop's mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jobs.training.batches import (
    TrainCollate,
    border_weights,
    epoch_draws,
    rank_samples,
    sampled_batches,
)
from unet_core.config import PreprocessConfig, TrainConfig
from unet_core.transforms import transforms_for_training
from unet_core.weightmap import border_weight_map

PRE = PreprocessConfig.for_channels(1)


def _pairs(n: int = 5, side: int = 48) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    pairs = {}
    for i in range(n):
        mask = np.zeros((side, side), np.uint8)
        for _ in range(3):  # a few separate "cells"
            y, x = rng.integers(2, side - 12, 2)
            mask[y : y + 8, x : x + 8] = 1
        image = (mask * 200 + rng.integers(0, 40, mask.shape)).astype(np.uint8)[..., None]
        pairs[f"slice_{i}"] = (image, mask)
    return pairs


def _collate(cfg: TrainConfig, epoch: int, weights=None) -> TrainCollate:
    return TrainCollate(
        transforms_for_training(cfg), PRE, seed=cfg.seed, epoch=epoch, weights=weights
    )


def test_draws_depend_on_seed_and_epoch_only():
    a = epoch_draws(19, 64, seed=3, epoch=2)
    assert a.shape == (64,) and a.min() >= 0 and a.max() < 19
    np.testing.assert_array_equal(a, epoch_draws(19, 64, seed=3, epoch=2))
    assert not np.array_equal(a, epoch_draws(19, 64, seed=3, epoch=3))
    assert not np.array_equal(a, epoch_draws(19, 64, seed=4, epoch=2))
    assert len(set(epoch_draws(3, 50, seed=0, epoch=1).tolist())) == 3  # every image can come up


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_ranks_share_the_samples_equally_without_overlap(world_size):
    shares = [rank_samples(10, world_size=world_size, rank=r) for r in range(world_size)]
    assert len({len(s) for s in shares}) == 1  # equal counts: DDP steps in lock-step
    everything = sorted(j for s in shares for j in s)
    assert everything == list(range(10 // world_size * world_size))


def _crops_by_sample(world_size: int, epoch: int, cfg: TrainConfig) -> dict[int, tuple]:
    """{sample j: (image tensor, mask tensor)} over every rank of a world (batch size 1)."""
    pairs = _pairs()
    crops = {}
    for rank in range(world_size):
        batches = sampled_batches(
            pairs,
            samples=12,
            world_size=world_size,
            rank=rank,
            batch_size=1,
            collate=_collate(cfg, epoch),
        )
        for j, (x, y) in zip(
            rank_samples(12, world_size=world_size, rank=rank), batches, strict=True
        ):
            crops[j] = (x, y)
    return crops


def test_the_same_crops_whatever_the_number_of_workers():
    cfg = TrainConfig(
        crop_size=32, samples_per_epoch=12, elastic=0.5, rotate_degrees=30, affine=0.5
    )
    one = _crops_by_sample(1, epoch=1, cfg=cfg)
    for world_size in (2, 3, 4):
        other = _crops_by_sample(world_size, epoch=1, cfg=cfg)
        assert sorted(other) == sorted(one)
        for j, (x, y) in other.items():
            assert torch.equal(x, one[j][0]) and torch.equal(y, one[j][1]), (world_size, j)
    # another epoch draws other crops
    again = _crops_by_sample(1, epoch=2, cfg=cfg)
    assert any(not torch.equal(again[j][0], one[j][0]) for j in one)


def test_batches_hold_the_ranks_samples_in_order():
    cfg = TrainConfig(crop_size=32, samples_per_epoch=10, batch_size=4)
    batches = list(
        sampled_batches(
            _pairs(), samples=10, world_size=2, rank=1, batch_size=4, collate=_collate(cfg, 1)
        )
    )
    assert [b[0].shape[0] for b in batches] == [4, 1]  # 5 samples: one full batch, the rest
    assert batches[0][0].shape[1:] == (1, 32, 32) and batches[0][1].dtype == torch.int64


def test_border_weights_are_those_of_each_augmented_crop():
    cfg = TrainConfig(crop_size=32, samples_per_epoch=4, border_weight=10.0, border_class=1)
    weights = border_weights(cfg, num_classes=2)
    assert border_weights(TrainConfig(), num_classes=2) is None  # off by default
    collate = _collate(cfg, 1, weights=weights)
    (x, y, w), *_ = sampled_batches(
        _pairs(), samples=4, world_size=1, rank=0, batch_size=4, collate=collate
    )
    assert w.shape == y.shape and w.dtype == torch.float32
    for mask, got in zip(y.numpy(), w.numpy(), strict=True):
        want = border_weight_map(
            mask.astype(np.uint8), foreground=1, w0=10.0, sigma=5.0, num_classes=2
        )
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert float(w.max()) > float(w.min())  # the borders between cells weigh more


def test_a_sharded_batch_carries_weights_too():
    cfg = TrainConfig(crop_size=32, border_weight=10.0)
    collate = _collate(cfg, 1, weights=border_weights(cfg, num_classes=2))
    pairs = _pairs(3)
    batch = {
        "key": np.array(list(pairs)),
        "image": np.stack([p[0] for p in pairs.values()]),
        "mask": np.stack([p[1] for p in pairs.values()]),
    }
    x, y, w = collate(batch)
    assert x.shape[0] == y.shape[0] == w.shape[0] == 3
    x2, y2 = _collate(cfg, 1)(batch)  # without weights: the same crops
    assert torch.equal(x, x2) and torch.equal(y, y2)
