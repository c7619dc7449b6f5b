"""The worker side of the data: augmented training batches and whole-image validation batches
from this rank's Ray Data shard.

The collate functions run in Ray Data's prefetch thread, overlapping the training step. Each
row is augmented with ``np.random.default_rng([seed, epoch, hash(key)])``: only the worker
knows the epoch, and keying on the stem makes a row's augmentation independent of which
worker gets it.

With ``samples_per_epoch`` (small sets of large images) every worker holds the whole training
set and an epoch is that many crops drawn with replacement: the draws come from
``(seed, epoch)`` alone and sample ``j`` is augmented with ``(seed, epoch, hash(key), j)``, so
the epoch's crops are the same whatever the number of workers; rank ``r`` of ``W`` takes the
samples ``j = r, r + W, ...`` (equal counts: DDP steps in lock-step). Border weight maps
(``border_weight``) are computed here, on each augmented crop's mask, in the data thread.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from unet_core.config import PreprocessConfig, TrainConfig
from unet_core.transforms import Compose, collate_pairs
from unet_core.weightmap import border_weight_map

Batch = tuple[torch.Tensor, ...]
"""(images, targets), plus per-pixel loss weights with border_weight."""
SAMPLING_STREAM = 0x5A4D
"""Seeds the epoch's draws apart from every row's augmentation stream."""
PREFETCH_BATCHES = 2


def stable_hash(key: str) -> int:
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big")


def _rows(batch: dict[str, np.ndarray]) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    for i in range(len(batch["key"])):
        yield str(batch["key"][i]), np.asarray(batch["image"][i]), np.asarray(batch["mask"][i])


def border_weights(cfg: TrainConfig, num_classes: int) -> Callable[[np.ndarray], np.ndarray] | None:
    """The border weight map of a crop's mask (`unet_core.weightmap`), or None when off."""
    if not cfg.border_weight:
        return None

    def weights(mask: np.ndarray) -> np.ndarray:
        return border_weight_map(
            mask,
            foreground=cfg.border_class,
            w0=cfg.border_weight,
            sigma=cfg.border_sigma,
            class_balance=cfg.border_class_balance,
            num_classes=num_classes,
        )

    return weights


class TrainCollate(NumpyBatchCollateFn):
    """Augment each row with its own (seed, epoch, key) generator, then batch (with the crops'
    border weight maps when `weights` is given)."""

    def __init__(
        self,
        transform: Compose,
        preprocess: PreprocessConfig,
        *,
        seed: int,
        epoch: int,
        weights: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.transform = transform
        self.preprocess = preprocess
        self.seed = seed
        self.epoch = epoch
        self.weights = weights

    def augment(
        self, key: str, image: np.ndarray, mask: np.ndarray, *stream: int
    ) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch, stable_hash(key), *stream])
        image, mask = self.transform(image, mask, rng)
        return np.ascontiguousarray(image), np.ascontiguousarray(mask)

    def collate(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> Batch:
        x, y = collate_pairs(pairs, self.preprocess)
        if self.weights is None:
            return x, y
        return x, y, torch.from_numpy(np.stack([self.weights(mask) for _, mask in pairs]))

    def __call__(self, batch: dict[str, np.ndarray]) -> Batch:
        return self.collate([self.augment(key, image, mask) for key, image, mask in _rows(batch)])


def epoch_draws(num_images: int, samples: int, *, seed: int, epoch: int) -> np.ndarray:
    """Image index (into the sorted keys) of each of the epoch's `samples` crops: drawn with
    replacement from (seed, epoch) alone, the same on every rank and for any world size."""
    return np.random.default_rng([seed, epoch, SAMPLING_STREAM]).integers(0, num_images, samples)


def rank_samples(samples: int, *, world_size: int, rank: int) -> range:
    """The sample indices of `rank`: every world_size-th, the remainder dropped (equal counts)."""
    return range(rank, samples // world_size * world_size, world_size)


class TrainingImages:
    """The whole training set on this worker (decoded once, on the first epoch that needs it),
    by key: what sampled epochs draw from."""

    def __init__(self) -> None:
        self.pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def load(self, dataset) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        if not self.pairs:
            for batch in dataset.iter_batches(batch_size=16, batch_format="numpy"):
                for key, image, mask in _rows(batch):
                    self.pairs[key] = (image, mask)
        return self.pairs


def sampled_batches(
    pairs: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    samples: int,
    world_size: int,
    rank: int,
    batch_size: int,
    collate: TrainCollate,
) -> Iterator[Batch]:
    """This rank's batches of one sampled epoch (`epoch_draws`), built in a background thread
    (augmentation and weight maps overlap the training step)."""
    keys = sorted(pairs)
    draws = epoch_draws(len(keys), samples, seed=collate.seed, epoch=collate.epoch)
    mine = rank_samples(samples, world_size=world_size, rank=rank)

    def batch(chunk: range) -> Batch:
        return collate.collate(
            [collate.augment(keys[draws[j]], *pairs[keys[draws[j]]], j) for j in chunk]
        )

    chunks = [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
    with ThreadPoolExecutor(1, thread_name_prefix="sampled-batches") as pool:
        pending = [pool.submit(batch, c) for c in chunks[:PREFETCH_BATCHES]]
        for i in range(len(chunks)):
            if i + PREFETCH_BATCHES < len(chunks):
                pending.append(pool.submit(batch, chunks[i + PREFETCH_BATCHES]))
            yield pending[i].result()
            pending[i] = None  # a consumed batch is not held until the epoch ends


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
    weights: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Iterator[Batch]:
    """One epoch of augmented training batches from this worker's shard."""
    yield from shard.iter_torch_batches(
        batch_size=batch_size,
        collate_fn=TrainCollate(transform, preprocess, seed=seed, epoch=epoch, weights=weights),
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
