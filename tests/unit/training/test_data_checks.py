"""Pre-launch data validation: each kind of bad input is a clear error naming the files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jobs.training.data_checks import DataValidationError, check_pair, gather_training_data
from unet_core.classes import ClassMap
from unet_core.data import Pair

BINARY = {"classes": [{"name": "background", "value": 0}, {"name": "object", "value": 255}]}


def _write(root: Path, stem: str, *, mode: str = "RGB", size=(32, 24), mask_values=(0, 255)):
    """images/<stem>.png (mode, size=(w, h)) and masks/<stem>.png holding mask_values."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    w, h = size
    channels = {"RGB": 3, "L": 1}[mode]
    pixels = np.random.default_rng(0).integers(0, 255, (h, w, channels), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels).save(
        root / "images" / f"{stem}.png"
    )
    mask = np.full((h, w), mask_values[0], dtype=np.uint8)
    mask[: h // 2] = mask_values[-1]
    Image.fromarray(mask).save(root / "masks" / f"{stem}.png")


def _dataset(root: Path, n: int = 6, prefix: str = "case", **kwargs) -> Path:
    for i in range(n):
        _write(root, f"{prefix}_{i:02d}", **kwargs)
    (root / "classes.json").write_text(json.dumps(BINARY))
    return root


def _gather(root: Path, **kwargs):
    kwargs.setdefault("val_fraction", 0.3)
    kwargs.setdefault("seed", 0)
    return gather_training_data(str(root), **kwargs)


def test_valid_set_gets_a_split_and_inferred_channels(tmp_path):
    gathered, unchecked = _gather(_dataset(tmp_path, mode="L"), num_workers=2)
    assert gathered.in_channels == 1
    assert gathered.class_map.num_classes == 2
    assert len(gathered.train) + len(gathered.val) == 6 and gathered.val
    assert not {p.key for p in gathered.train} & {p.key for p in gathered.val}
    assert not unchecked  # all six checked on the driver
    assert gathered.root == str(tmp_path.resolve())


def test_empty_data_names_the_folder(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "classes.json").write_text(json.dumps(BINARY))
    with pytest.raises(DataValidationError) as err:
        _gather(tmp_path)
    assert str(tmp_path) in str(err.value) and "images/" in str(err.value)


def test_unpaired_files_are_named(tmp_path):
    root = _dataset(tmp_path, n=4)
    (root / "masks" / "case_01.png").unlink()
    (root / "images" / "case_03.png").unlink()
    with pytest.raises(DataValidationError) as err:
        _gather(root)
    message = str(err.value)
    assert "images/case_01.png" in message and "no mask" in message
    assert "masks/case_03.png" in message and "no image" in message


def test_mask_values_outside_the_class_map_name_file_and_value(tmp_path):
    root = _dataset(tmp_path, n=5)
    _write(root, "case_02", mask_values=(0, 7))
    with pytest.raises(DataValidationError) as err:
        _gather(root)
    message = str(err.value)
    assert "masks hold values outside the class map" in message
    assert "masks/case_02.png" in message and "[7]" in message
    assert "case_01" not in message


def test_mixed_channel_counts_name_the_odd_images(tmp_path):
    root = _dataset(tmp_path, n=5, mode="RGB")
    _write(root, "case_03", mode="L")
    with pytest.raises(DataValidationError) as err:
        _gather(root)
    message = str(err.value)
    assert "mix channel counts" in message and "images/case_03.png" in message
    assert "case_00" not in message


def test_mask_of_another_size_and_unreadable_image_are_named(tmp_path):
    root = _dataset(tmp_path, n=4)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "masks" / "case_01.png")
    (root / "images" / "case_02.png").write_bytes(b"not an image at all")
    with pytest.raises(DataValidationError) as err:
        _gather(root)
    message = str(err.value)
    assert "masks/case_01.png: mask is 10x10 but its image" in message and "32x24" in message
    assert "images cannot be read" in message and "case_02.png" in message


def test_missing_class_map_says_how_to_pass_one(tmp_path):
    root = _dataset(tmp_path)
    (root / "classes.json").unlink()
    with pytest.raises(DataValidationError, match="--class-map FILE"):
        _gather(root)
    class_map = tmp_path / "elsewhere.json"
    class_map.write_text(json.dumps(BINARY))
    gathered, _ = _gather(root, class_map_path=str(class_map))
    assert gathered.class_map.names == ["background", "object"]


def test_no_validation_set_and_too_few_pairs_for_the_workers(tmp_path):
    root = _dataset(tmp_path, n=3)
    with pytest.raises(DataValidationError, match="--val-fraction above 0"):
        _gather(root, val_fraction=0.0)
    with pytest.raises(DataValidationError, match="for 8 workers"):
        _gather(root, num_workers=8)


def test_separate_validation_root(tmp_path):
    train = _dataset(tmp_path / "train", n=4)
    val = _dataset(tmp_path / "val", n=2, prefix="held_out")
    gathered, _ = _gather(train, val_data=str(val), val_fraction=0.0)
    assert len(gathered.train) == 4 and len(gathered.val) == 2
    assert gathered.val_root == str(val.resolve())


def test_validation_root_sharing_cases_with_the_training_root_is_refused(tmp_path):
    train = _dataset(tmp_path / "train", n=4)
    val = _dataset(tmp_path / "val", n=3, prefix="held_out")
    _write(val, "case_01")
    _write(val, "case_03")
    with pytest.raises(DataValidationError) as info:
        _gather(train, val_data=str(val), val_fraction=0.0)
    message = str(info.value)
    assert "2 case(s) are both in --data" in message
    assert "case_01" in message and "case_03" in message and "held_out" not in message
    with pytest.raises(DataValidationError, match="is the training root"):
        _gather(train, val_data=str(train) + "/", val_fraction=0.0)


def test_large_sets_are_sampled_and_the_rest_left_for_ray(tmp_path):
    root = _dataset(tmp_path, n=12, size=(8, 8))
    gathered, unchecked = _gather(root, check_limit=5)
    assert sum(len(pairs) for _, pairs in unchecked) == 12 - 5


def test_check_pair_reads_only_the_header_of_images(tmp_path):
    root = _dataset(tmp_path, n=1, size=(300, 200))
    check = check_pair(
        str(root),
        Pair(image="images/case_00.png", mask="masks/case_00.png", key="case_00"),
        ClassMap.from_dict(BINARY),
    )
    assert (check.channels, check.height, check.width, check.problem) == (3, 200, 300, "")
