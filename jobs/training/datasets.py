"""Ray Data datasets of image/mask pairs (driver side); `jobs.training.batches` iterates them
on the workers.

- Ray Data tasks (anywhere in the cluster) read and decode each pair with the reader of
  every labelled pair (`jobs.common.pairs`): images to HxWxC uint8, masks through the class map to HxW class indices
  (nearest-neighbour semantics: masks are never interpolated). A pair whose file fails to
  read or decode does not fail the read task: it is left out, logged and recorded with its
  error in the job's bad-pair ledger (`jobs.training.bad_pairs`: counted per epoch, bounded
  by --max-failed-fraction), an image above --max-image-pixels too. Both files are decoded by the
  run's `DecodeOptions` (EXIF orientation applied unless --no-exif-transpose), shipped to
  every decode task with its arguments. Decoded data are deterministic, so small sets are
  materialised once and reused every epoch (`cache`).
- Training shards are equal-sized (`streaming_split(equal=True)`: DDP needs the same number
  of steps on every rank). Validation shards partition the set without dropping a row
  (`ExactValidationDataConfig`), so all-reduced metrics are exact over the whole set.
"""

from __future__ import annotations

import logging
import random

import numpy as np
import ray.data
from ray.actor import ActorHandle
from ray.train import DataConfig

from jobs.common.pairs import pair_items, read_pairs
from jobs.training.bad_pairs import open_ledger, record_bad_pairs
from unet_core.classes import ClassMap
from unet_core.data import Pair
from unet_core.image_files import DEFAULT_OPTIONS, DecodeOptions

log = logging.getLogger(__name__)

TRAIN, VAL = "train", "val"
"""Names of the datasets handed to the trainer (and of the shards the workers ask for)."""


# --- driver side: datasets ----------------------------------------------------------------


def decode_pairs(
    batch: dict[str, np.ndarray],
    *,
    class_map: dict,
    channels: int,
    endpoint_url: str | None,
    ledger: ActorHandle | None = None,
    decode: DecodeOptions = DEFAULT_OPTIONS,
) -> dict[str, list]:
    """Ray Data UDF: the decoded rows of a batch (`jobs.common.pairs.read_pairs`); the pairs
    that fail are left out and recorded in the job's `ledger` (`jobs.training.bad_pairs`), which counts them and bounds them."""
    rows, errors = read_pairs(
        batch,
        ClassMap.from_dict(class_map),
        channels=channels,
        endpoint_url=endpoint_url,
        decode=decode,
    )
    for error in errors.values():
        log.warning("leaving out a pair: %s", error)
    if errors and ledger is not None:
        record_bad_pairs(ledger, errors)
    return rows


def build_dataset(
    root: str,
    pairs: list[Pair],
    *,
    class_map: ClassMap,
    channels: int,
    endpoint_url: str | None = None,
    shuffle_seed: int | None = None,
    ray_remote_args: dict | None = None,
    ledger: ActorHandle | None = None,
    decode: DecodeOptions = DEFAULT_OPTIONS,
) -> ray.data.Dataset:
    """Pairs -> a lazy dataset of decoded rows {key, image (H,W,C) uint8, mask (H,W) uint8};
    pairs that fail are left out and recorded in `ledger` (`jobs.training.bad_pairs`)."""
    items = pair_items(root, pairs)
    if shuffle_seed is not None:  # an initial order that is not the sorted listing
        random.Random(shuffle_seed).shuffle(items)
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 200)))
    return ds.map_batches(
        decode_pairs,
        batch_size=8,
        batch_format="numpy",
        fn_kwargs={
            "class_map": class_map.to_dict(),
            "channels": channels,
            "endpoint_url": endpoint_url,
            "ledger": ledger,
            "decode": decode,
        },
        **(ray_remote_args or {}),
    )


def build_train_val(
    data,
    *,
    seed: int,
    endpoint_url: str | None = None,
    cache: bool | None = None,
    ray_remote_args: dict | None = None,
) -> dict[str, ray.data.Dataset]:
    """{"train", "val"} datasets of a `jobs.training.data_checks.TrainingData`; materialised (decoded once,
    reused every epoch) when `cache`, or by default when they fit in a fifth of the store.
    Opens this job's bad-pair ledger, which both record into."""
    ledger = open_ledger()
    out = {}
    for name, root, pairs, shuffle in (
        (TRAIN, data.root, data.train, seed),
        (VAL, data.val_root, data.val, None),
    ):
        ds = build_dataset(
            root,
            pairs,
            class_map=data.class_map,
            channels=data.in_channels,
            endpoint_url=endpoint_url,
            shuffle_seed=shuffle,
            ray_remote_args=ray_remote_args,
            ledger=ledger,
            decode=data.decode,
        )
        keep = (
            cache
            if cache is not None
            else should_cache(len(pairs), data.mean_pixels, data.in_channels)
        )
        out[name] = ds.materialize() if keep else ds
    return out


def should_cache(num_pairs: int, mean_pixels: float, channels: int, fraction: float = 0.2) -> bool:
    """Whether the decoded set fits comfortably (a fifth) in the object store."""
    needed = num_pairs * mean_pixels * (channels + 1)
    available = ray.available_resources().get("object_store_memory", 0.0)
    return needed <= fraction * available


class ExactValidationDataConfig(DataConfig):
    """Equal shards for training (DDP lock-step); a lossless partition for validation; the
    datasets named in ``whole`` go to every worker unsplit (sampled epochs draw from all of
    the training set on each rank).

    The default `DataConfig` splits every dataset with ``equal=True``, which drops up to
    ``world_size - 1`` rows; validation metrics must cover every row exactly once.
    """

    def __init__(self, exact: tuple[str, ...] = (VAL,), whole: tuple[str, ...] = ()) -> None:
        super().__init__(datasets_to_split="all")
        self._exact = set(exact)
        self._whole = set(whole)

    @staticmethod
    def default_ingest_options() -> ray.data.ExecutionOptions:
        """Ray Train's default (the DataContext's options) without passing the deprecated
        ``exclude_resources`` again when it is zero, as nothing here sets it: Ray 2.60 warns
        on every ExecutionOptions built with it."""
        options = ray.data.DataContext.get_current().execution_options
        if not options.exclude_resources.is_zero():
            return DataConfig.default_ingest_options()
        return ray.data.ExecutionOptions(
            resource_limits=options.resource_limits,
            preserve_order=options.preserve_order,
            verbose_progress=options.verbose_progress,
            label_selector=options.label_selector,
        )

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        ours = self._exact | self._whole
        regular = {k: v for k, v in datasets.items() if k not in ours}
        output = (
            super().configure(regular, world_size, worker_handles, worker_node_ids, **kwargs)
            if regular
            else [{} for _ in range(world_size)]
        )
        for name, ds in datasets.items():
            if name not in ours:
                continue
            if ds.name is None:
                ds.set_name(name)
            ds = ds.copy(ds)
            ds.context.execution_options = self._resolve_execution_options(name)
            if name in self._whole:  # every worker iterates all of it
                for i in range(world_size):
                    output[i][name] = ds.iterator()
                continue
            splits = ds.streaming_split(world_size, equal=False)
            for i, split in enumerate(splits):
                output[i][name] = split
        return output


# --- driver side: samples for figures ----------------------------------------------------


def read_samples(
    root: str,
    pairs: list[Pair],
    *,
    class_map: ClassMap,
    channels: int,
    endpoint_url: str | None = None,
    count: int = 4,
    decode: DecodeOptions = DEFAULT_OPTIONS,
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(key, image, mask) of those of the first `count` pairs that decode, read on the driver
    (for figures)."""
    rows, _ = read_pairs(
        pair_items(root, pairs[:count]),
        class_map,
        channels=channels,
        endpoint_url=endpoint_url,
        decode=decode,
    )
    return list(zip(rows["key"], rows["image"], rows["mask"], strict=True))
