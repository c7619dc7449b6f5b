"""The worker side of the data: augmented training batches and whole-image validation batches
from this rank's Ray Data shard.

The collate functions run in Ray Data's prefetch thread, overlapping the training step. Each
row is augmented with ``np.random.default_rng([seed, epoch, hash(key)])``: only the worker
knows the epoch, and keying on the stem makes a row's augmentation independent of which
worker gets it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from unet_core.config import PreprocessConfig
from unet_core.transforms import Compose, collate_pairs

Batch = tuple[torch.Tensor, torch.Tensor]


def stable_hash(key: str) -> int:
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big")


def _rows(batch: dict[str, np.ndarray]) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    for i in range(len(batch["key"])):
        yield str(batch["key"][i]), np.asarray(batch["image"][i]), np.asarray(batch["mask"][i])


class TrainCollate(NumpyBatchCollateFn):
    """Augment each row with its own (seed, epoch, key) generator, then batch."""

    def __init__(
        self, transform: Compose, preprocess: PreprocessConfig, *, seed: int, epoch: int
    ) -> None:
        self.transform = transform
        self.preprocess = preprocess
        self.seed = seed
        self.epoch = epoch

    def __call__(self, batch: dict[str, np.ndarray]) -> Batch:
        pairs = []
        for key, image, mask in _rows(batch):
            rng = np.random.default_rng([self.seed, self.epoch, stable_hash(key)])
            image, mask = self.transform(image, mask, rng)
            pairs.append((np.ascontiguousarray(image), np.ascontiguousarray(mask)))
        return collate_pairs(pairs, self.preprocess)


@dataclass
class SizeGroups:
    """Batches of equal-size images (a plain container: Ray leaves it as it is)."""

    batches: list[Batch]


class EvalCollate(NumpyBatchCollateFn):
    """Whole images, grouped by size (no padding, so metrics are those of full images)."""

    def __init__(self, preprocess: PreprocessConfig) -> None:
        self.preprocess = preprocess

    def __call__(self, batch: dict[str, np.ndarray]) -> SizeGroups:
        groups: dict[tuple, list] = {}
        for _, image, mask in _rows(batch):
            groups.setdefault(image.shape, []).append((image, mask))
        return SizeGroups([collate_pairs(pairs, self.preprocess) for pairs in groups.values()])


def train_batches(
    shard,
    *,
    batch_size: int,
    transform: Compose,
    preprocess: PreprocessConfig,
    seed: int,
    epoch: int,
    rank: int,
) -> Iterator[Batch]:
    """One epoch of augmented training batches from this worker's shard."""
    yield from shard.iter_torch_batches(
        batch_size=batch_size,
        collate_fn=TrainCollate(transform, preprocess, seed=seed, epoch=epoch),
        prefetch_batches=2,
        local_shuffle_buffer_size=max(4 * batch_size, 32),
        local_shuffle_seed=stable_hash(f"{seed}:{epoch}:{rank}") % 2**31,
    )


def eval_batches(shard, *, batch_size: int, preprocess: PreprocessConfig) -> Iterator[Batch]:
    """This worker's part of the validation set, whole images."""
    for groups in shard.iter_torch_batches(
        batch_size=batch_size, collate_fn=EvalCollate(preprocess), prefetch_batches=1
    ):
        yield from groups.batches
