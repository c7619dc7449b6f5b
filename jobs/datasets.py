"""Ray Data datasets of image/mask pairs, and the per-worker batch iterators over their shards.

Split of the work:
- Ray Data tasks (anywhere in the cluster) read bytes through the filesystem factory and
  decode them: images to HxWxC uint8, masks through the class map to HxW class indices
  (nearest-neighbour semantics: masks are never interpolated). A file that fails to decode
  is logged with its path and skipped; it does not fail the read task. Decoded data are
  deterministic, so small sets are materialised once and reused every epoch (`cache`).
- The worker's collate function (run by Ray Data in a prefetch thread, overlapping the
  training step) applies the random crop/flip/rotate/jitter with
  ``np.random.default_rng([seed, epoch, hash(key)])``: only the worker knows the epoch, and
  keying on the stem makes a row's augmentation independent of which worker gets it.
- Training shards are equal-sized (`streaming_split(equal=True)`: DDP needs the same number
  of steps on every rank). Validation shards partition the set without dropping a row
  (`ExactValidationDataConfig`), so all-reduced metrics are exact over the whole set.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray.data
import torch
from ray.data.collate_fn import NumpyBatchCollateFn
from ray.train import DataConfig

from jobs import fs
from unet_core.classes import ClassMap
from unet_core.config import IGNORE_INDEX, PreprocessConfig
from unet_core.data import Pair, decode_image, decode_mask
from unet_core.transforms import Compose

log = logging.getLogger(__name__)

TRAIN, VAL = "train", "val"
Batch = tuple[torch.Tensor, torch.Tensor]


# --- driver side: datasets ----------------------------------------------------------------


def pair_items(root: str, pairs: list[Pair]) -> list[dict[str, str]]:
    """One row per pair with absolute URIs (workers run elsewhere, with another cwd)."""
    root = fs.absolute(root)
    return [
        {"key": p.key, "image": fs.join(root, p.image), "mask": fs.join(root, p.mask)}
        for p in pairs
    ]


def decode_batch(
    batch: dict[str, np.ndarray],
    *,
    class_map: dict,
    channels: int,
    endpoint_url: str | None,
) -> dict[str, list]:
    """Read and decode a batch of pairs; undecodable rows are logged and dropped."""
    cmap = ClassMap.from_dict(class_map)
    keys, images, masks = [], [], []
    for key, image_uri, mask_uri in zip(batch["key"], batch["image"], batch["mask"], strict=True):
        try:
            image = decode_image(
                fs.read_bytes(image_uri, endpoint_url=endpoint_url),
                channels=channels,
                source=image_uri,
            )
            mask = decode_mask(
                fs.read_bytes(mask_uri, endpoint_url=endpoint_url), cmap, source=mask_uri
            )
            if mask.shape != image.shape[:2]:
                raise ValueError(f"{mask_uri}: mask size {mask.shape} != image {image.shape[:2]}")
        except (OSError, ValueError) as exc:  # decode errors are ValueErrors naming the file
            log.warning("skipping pair %s: %s", key, exc)
            continue
        keys.append(str(key))
        images.append(image)
        masks.append(mask)
    return {"key": keys, "image": images, "mask": masks}


def build_dataset(
    root: str,
    pairs: list[Pair],
    *,
    class_map: ClassMap,
    channels: int,
    endpoint_url: str | None = None,
    shuffle_seed: int | None = None,
    ray_remote_args: dict | None = None,
) -> ray.data.Dataset:
    """Pairs -> a lazy dataset of decoded rows {key, image (H,W,C) uint8, mask (H,W) uint8}."""
    items = pair_items(root, pairs)
    if shuffle_seed is not None:  # an initial order that is not the sorted listing
        random.Random(shuffle_seed).shuffle(items)
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 200)))
    return ds.map_batches(
        decode_batch,
        batch_size=8,
        batch_format="numpy",
        fn_kwargs={
            "class_map": class_map.to_dict(),
            "channels": channels,
            "endpoint_url": endpoint_url,
        },
        **(ray_remote_args or {}),
    )


def build_train_val(
    plan,
    *,
    seed: int,
    endpoint_url: str | None = None,
    cache: bool | None = None,
    ray_remote_args: dict | None = None,
) -> dict[str, ray.data.Dataset]:
    """{"train", "val"} datasets of a `jobs.validation.DataPlan`; materialised (decoded once,
    reused every epoch) when `cache`, or by default when they fit in a fifth of the store."""
    out = {}
    for name, root, pairs, shuffle in (
        (TRAIN, plan.root, plan.train, seed),
        (VAL, plan.val_root, plan.val, None),
    ):
        ds = build_dataset(
            root,
            pairs,
            class_map=plan.class_map,
            channels=plan.in_channels,
            endpoint_url=endpoint_url,
            shuffle_seed=shuffle,
            ray_remote_args=ray_remote_args,
        )
        keep = (
            cache
            if cache is not None
            else should_cache(len(pairs), plan.mean_pixels, plan.in_channels)
        )
        out[name] = ds.materialize() if keep else ds
    return out


def should_cache(num_pairs: int, mean_pixels: float, channels: int, fraction: float = 0.2) -> bool:
    """Whether the decoded set fits comfortably (a fifth) in the object store."""
    needed = num_pairs * mean_pixels * (channels + 1)
    available = ray.available_resources().get("object_store_memory", 0.0)
    return needed <= fraction * available


class ExactValidationDataConfig(DataConfig):
    """Equal shards for training (DDP lock-step); a lossless partition for validation.

    The default `DataConfig` splits every dataset with ``equal=True``, which drops up to
    ``world_size - 1`` rows; validation metrics must cover every row exactly once.
    """

    def __init__(self, exact: tuple[str, ...] = (VAL,)) -> None:
        super().__init__(datasets_to_split="all")
        self._exact = set(exact)

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        regular = {k: v for k, v in datasets.items() if k not in self._exact}
        output = (
            super().configure(regular, world_size, worker_handles, worker_node_ids, **kwargs)
            if regular
            else [{} for _ in range(world_size)]
        )
        for name, ds in datasets.items():
            if name not in self._exact:
                continue
            if ds.name is None:
                ds.set_name(name)
            ds = ds.copy(ds)
            ds.context.execution_options = self._resolve_execution_options(name)
            splits = ds.streaming_split(world_size, equal=False)
            for i, split in enumerate(splits):
                output[i][name] = split
        return output


# --- worker side: batches -----------------------------------------------------------------


def stable_hash(key: str) -> int:
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big")


def _rows(batch: dict[str, np.ndarray]) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    for i in range(len(batch["key"])):
        yield str(batch["key"][i]), np.asarray(batch["image"][i]), np.asarray(batch["mask"][i])


def _to_tensors(
    images: list[np.ndarray], masks: list[np.ndarray], preprocess: PreprocessConfig
) -> Batch:
    """Pad to the largest size (image 0, mask ignored) and normalise: (B,C,H,W), (B,H,W)."""
    h = max(m.shape[0] for m in masks)
    w = max(m.shape[1] for m in masks)
    c = images[0].shape[2]
    x = np.zeros((len(images), h, w, c), dtype=np.uint8)
    y = np.full((len(masks), h, w), IGNORE_INDEX, dtype=np.uint8)
    for i, (image, mask) in enumerate(zip(images, masks, strict=True)):
        x[i, : image.shape[0], : image.shape[1]] = image
        y[i, : mask.shape[0], : mask.shape[1]] = mask
    mean = torch.tensor(preprocess.mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
    std = torch.tensor(preprocess.std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).float()  # (B, C, H, W)
    return (xt - mean) / std, torch.from_numpy(y).long()


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
        images, masks = [], []
        for key, image, mask in _rows(batch):
            rng = np.random.default_rng([self.seed, self.epoch, stable_hash(key)])
            image, mask = self.transform(image, mask, rng)
            images.append(np.ascontiguousarray(image))
            masks.append(np.ascontiguousarray(mask))
        return _to_tensors(images, masks, self.preprocess)


@dataclass
class SizeGroups:
    """Batches of equal-size images (a plain container: Ray leaves it as it is)."""

    batches: list[Batch]


class EvalCollate(NumpyBatchCollateFn):
    """Whole images, grouped by size (no padding, so metrics are those of full images)."""

    def __init__(self, preprocess: PreprocessConfig) -> None:
        self.preprocess = preprocess

    def __call__(self, batch: dict[str, np.ndarray]) -> SizeGroups:
        groups: dict[tuple, tuple[list, list]] = {}
        for _, image, mask in _rows(batch):
            images, masks = groups.setdefault(image.shape, ([], []))
            images.append(image)
            masks.append(mask)
        return SizeGroups([_to_tensors(i, m, self.preprocess) for i, m in groups.values()])


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


# --- driver side: demo data and samples -----------------------------------------------------


def demo_data_root(cache_dir: Path, *, num_images: int, size: int, seed: int = 0) -> str:
    """The generated demo set under the cache folder, made once (atomically) and reused."""
    from unet_core.synthetic import make_synthetic_dataset

    root = cache_dir / "demo-data" / f"n{num_images}-s{size}-seed{seed}"
    if (root / "classes.json").is_file():
        return str(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=root.parent, prefix=".tmp-"))
    try:
        make_synthetic_dataset(scratch, num_images=num_images, size=size, seed=seed)
        try:
            os.replace(scratch, root)
        except OSError:  # another job made it first
            if not (root / "classes.json").is_file():
                raise
        log.info(
            "generated the demo data set: %d images of %dx%d in %s", num_images, size, size, root
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return str(root)


def read_samples(
    root: str,
    pairs: list[Pair],
    *,
    class_map: ClassMap,
    channels: int,
    endpoint_url: str | None = None,
    count: int = 4,
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(key, image, mask) of the first `count` pairs, read on the driver (for figures)."""
    batch = {
        k: np.array([r[k] for r in pair_items(root, pairs[:count])])
        for k in ("key", "image", "mask")
    }
    rows = decode_batch(
        batch, class_map=class_map.to_dict(), channels=channels, endpoint_url=endpoint_url
    )
    return list(zip(rows["key"], rows["image"], rows["mask"], strict=True))
