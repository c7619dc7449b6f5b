"""Pairs that fail to read or decode in training: each is left out with an error naming its
file, counted once, and above --max-failed-fraction the error names them and the fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jobs.common.pairs import pair_items, read_pairs
from jobs.training.bad_pairs import MAX_EXAMPLES, BadPairLedger, BadPairsError, examples
from jobs.training.data_checks import DataValidationError, check_pair
from unet_core.data import pair_images_and_masks
from unet_core.synthetic import make_synthetic_dataset


@pytest.fixture
def data(tmp_path) -> tuple[Path, object]:
    class_map = make_synthetic_dataset(tmp_path, num_images=6, size=32, seed=0)
    return tmp_path, class_map


def batch_of(root: Path) -> dict[str, np.ndarray]:
    items = pair_items(str(root), pair_images_and_masks(root))
    return {k: np.array([item[k] for item in items]) for k in ("key", "image", "mask")}


def decode(batch: dict[str, np.ndarray], class_map) -> tuple[dict, dict]:
    return read_pairs(batch, class_map, channels=3)


def test_clean_batch_decodes_every_pair(data):
    root, class_map = data
    rows, errors = decode(batch_of(root), class_map)
    assert errors == {} and len(rows["key"]) == 6
    assert rows["image"][0].shape == (32, 32, 3) and rows["mask"][0].shape == (32, 32)


def test_each_bad_pair_is_left_out_with_an_error_naming_its_file(data):
    root, class_map = data
    batch = batch_of(root)  # listed and paired as on the driver; broken since
    truncated = root / "images" / "synth_0001.png"
    truncated.write_bytes(truncated.read_bytes()[:200])  # the header survives, the pixels not
    (root / "masks" / "synth_0002.png").unlink()
    small = np.zeros((16, 32), dtype=np.uint8)
    Image.fromarray(small).save(root / "masks" / "synth_0003.png")

    rows, errors = decode(batch, class_map)

    assert rows["key"] == ["synth_0000", "synth_0004", "synth_0005"]
    assert len(rows["image"]) == len(rows["mask"]) == 3
    image = {i: str(root / "images" / f"synth_000{i}.png") for i in (1, 2, 3)}
    assert sorted(errors) == sorted(image.values())  # one entry per pair, by its image
    assert errors[image[1]].startswith(f"{truncated}: cannot decode image")
    assert "truncated" in errors[image[1]]
    assert errors[image[2]].startswith(f"{root / 'masks' / 'synth_0002.png'}: cannot read")
    assert errors[image[3]].startswith(f"{root / 'masks' / 'synth_0003.png'}: mask is 32x16 but")


def test_a_truncated_image_passes_the_driver_check(data):
    """Why training must count: the driver reads image headers only (data_checks)."""
    root, class_map = data
    truncated = root / "images" / "synth_0001.png"
    truncated.write_bytes(truncated.read_bytes()[:200])
    pair = pair_images_and_masks(root)[1]
    assert check_pair(str(root), pair, class_map).problem == ""
    assert len(decode(batch_of(root), class_map)[1]) == 1


def test_ledger_counts_a_pair_once_and_keeps_its_first_error():
    ledger = BadPairLedger()
    ledger.record({"s3://b/images/a.png": "first"})
    ledger.record({"s3://b/images/a.png": "retried task", "s3://b/images/b.png": "other"})
    assert ledger.errors() == {"s3://b/images/a.png": "first", "s3://b/images/b.png": "other"}


def test_error_names_the_pairs_the_bound_and_the_fix():
    errors = {f"/d/images/{i:02d}.png": f"/d/images/{i:02d}.png: broken" for i in range(13)}
    err = BadPairsError.of(errors, max_bad_pairs=2)
    text = str(err)
    assert isinstance(err, DataValidationError) and err.exit_kind == "criterion"  # exit 1
    assert text.startswith("13 image/mask pair(s) could not be read or decoded")
    assert (
        "the 2 that --max-failed-fraction allows" in text and "Repair or remove these files" in text
    )
    named = [f"/d/images/{i:02d}.png: broken" for i in range(MAX_EXAMPLES)]
    assert all(line in text for line in named) and "/d/images/10.png" not in text
    assert "... and 3 more" in text
    assert examples(errors) == named
    assert examples({}) == []
