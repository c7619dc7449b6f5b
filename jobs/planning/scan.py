"""The pass over the data: every pair listed (the complete listing, `pair_images_and_masks`
over a local folder or an S3 prefix), every image's header read, and a seeded sample of pairs
read in full, in Ray Data tasks that each return one `Tally`; the driver merges them as they
stream in (`ray.data.Dataset.iter_rows`), so it holds one tally, never the pixels of the set.
"""

from __future__ import annotations

import logging
import math
import random
import sys

import numpy as np
from PIL import UnidentifiedImageError

from jobs.common import fs
from jobs.common.pairs import read_file, read_mask, size_mismatch
from jobs.common.ray_cluster import data_remote_args
from jobs.planning.tally import Tally
from unet_core.classes import CLASS_MAP_FILENAME, ClassMap
from unet_core.data import Pair, pair_images_and_masks
from unet_core.image_files import DEFAULT_OPTIONS, DecodeOptions, image_header
from unet_core.preprocessing import read_array

logger = logging.getLogger(__name__)

HEADER_BYTES = 64 * 1024
"""Bytes read for a header; a file whose header lies further in (some TIFFs) is read whole."""
BATCH_SIZE = 64
"""Pairs per Ray Data batch, each of which returns one tally."""


def read_class_map(root: str, class_map: str | None, *, endpoint_url: str | None) -> ClassMap:
    """--class-map, else classes.json at the root (local or s3://)."""
    uri = fs.absolute(class_map) if class_map else fs.join(root, CLASS_MAP_FILENAME)
    try:
        text = fs.read_bytes(uri, endpoint_url=endpoint_url).decode()
    except (OSError, FileNotFoundError) as exc:
        where = "--class-map" if class_map else f"no {CLASS_MAP_FILENAME} at the data root:"
        raise FileNotFoundError(
            f"{where} {uri} cannot be read ({exc}); add a class map (class names, the mask "
            "value of each class, ignore_values) or pass --class-map FILE"
        ) from exc
    return ClassMap.from_json(text, source=uri)


def list_pairs(root: str, *, endpoint_url: str | None) -> list[Pair]:
    """Every image/mask pair under ``root`` (PairingError naming the files that do not pair)."""
    return pair_images_and_masks(root, lister=fs.make_lister(root, endpoint_url=endpoint_url))


def sample_indices(count: int, sample: int, seed: int) -> set[int]:
    """A seeded choice of ``min(sample, count)`` of the ``count`` pairs (in key order)."""
    return set(random.Random(seed).sample(range(count), min(sample, count)))


def _read_prefix(uri: str, endpoint_url: str | None) -> bytes:
    filesystem, path = fs.resolve(uri, endpoint_url=endpoint_url)
    try:
        with filesystem.open_input_stream(path) as f:
            return f.read(HEADER_BYTES)
    except OSError as exc:
        raise OSError(f"{uri}: cannot read ({type(exc).__name__}: {exc})") from exc


def header_of(data: bytes, uri: str, decode: DecodeOptions) -> tuple[str, int, int]:
    """(mode, height, width) as decoded; a header beyond the bytes given raises."""
    # A header decodes no pixels: read it whatever the limit (the sample applies the limit).
    options = DecodeOptions(exif_transpose=decode.exif_transpose, max_image_pixels=sys.maxsize)
    return image_header(data, source=uri, options=options)


def tally_pairs(
    rows: list[dict],
    *,
    class_map: ClassMap,
    seed: int,
    endpoint_url: str | None = None,
    decode: DecodeOptions = DEFAULT_OPTIONS,
) -> Tally:
    """The tally of some pairs: ``rows`` of {"key", "image", "mask" (URIs), "sampled"}."""
    tally = Tally(class_map.num_classes)
    for row in rows:
        tally.pairs += 1
        image_uri, mask_uri = str(row["image"]), str(row["mask"])
        try:
            if not row["sampled"]:
                try:
                    mode, h, w = header_of(_read_prefix(image_uri, endpoint_url), image_uri, decode)
                except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
                    whole = read_file(image_uri, endpoint_url)  # a header further in
                    mode, h, w = header_of(whole, image_uri, decode)
                tally.add_header(mode, h, w)
                continue
            data = read_file(image_uri, endpoint_url)
            mode, _, _ = header_of(data, image_uri, decode)
            image = read_array(data, source=image_uri, options=decode)  # (H, W, C)
            mask = read_mask(mask_uri, class_map, endpoint_url=endpoint_url, decode=decode)
            error = size_mismatch(mask_uri, mask.shape, image_uri, image.shape[:2])
            if error:
                raise ValueError(error)
            tally.add_header(mode, *image.shape[:2])
            tally.add_sample(str(row["key"]), image, mask, seed)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            tally.fail(str(exc) if image_uri in str(exc) else f"{image_uri}: {exc}")
    return tally


def scan(
    root: str,
    pairs: list[Pair],
    class_map: ClassMap,
    *,
    sample: int,
    seed: int,
    endpoint_url: str | None = None,
    decode: DecodeOptions = DEFAULT_OPTIONS,
) -> Tally:
    """The merged tally of every pair, computed in Ray Data tasks (Ray must be up)."""
    import ray.data

    picked = sample_indices(len(pairs), sample, seed)
    items = [
        {"key": p.key, "image": fs.join(root, p.image), "mask": fs.join(root, p.mask),
         "sampled": i in picked}
        for i, p in enumerate(pairs)
    ]  # fmt: skip
    class_map_dict = class_map.to_dict()

    def tally_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [
            dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)
        ]
        tally = tally_pairs(
            rows,
            class_map=ClassMap.from_dict(class_map_dict),
            seed=seed,
            endpoint_url=endpoint_url,
            decode=decode,
        )
        return {"tally": np.array([tally.to_bytes()], dtype=object)}

    logger.info(
        "fingerprinting %d pairs (headers of all, %d sampled pairs read in full)",
        len(items),
        len(picked),
    )
    blocks = max(1, math.ceil(len(items) / BATCH_SIZE))
    ds = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
        tally_batch, batch_size=BATCH_SIZE, batch_format="numpy", **data_remote_args()
    )
    merged = Tally(class_map.num_classes)
    for row in ds.iter_rows():
        merged.merge(Tally.from_bytes(row["tally"]))
    return merged
