"""The one reader of labelled pairs (`jobs.common.pairs`) and the one scoring computation
(`jobs.common.pair_scores`): errors that name the file, bad pairs left out by image, ignored
pixels, and the gate's settings spelled as evaluate's flags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jobs.common.pair_scores import GATE_SETTINGS, image_confusion
from jobs.common.pairs import pair_items, read_pair, read_pairs
from jobs.inference.config import EvaluateConfig, parse_config
from unet_core.classes import ClassMap
from unet_core.data import MaskValueError, pair_images_and_masks

BINARY = ClassMap.binary()


def write_pair(root: Path, stem: str, *, image_hw=(12, 10), mask: np.ndarray | None = None):
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(stem))
    Image.fromarray(rng.integers(0, 256, (*image_hw, 3), dtype=np.uint8)).save(
        root / "images" / f"{stem}.png"
    )
    if mask is None:
        mask = np.where(rng.random(image_hw) > 0.5, 255, 0).astype(np.uint8)
    Image.fromarray(mask).save(root / "masks" / f"{stem}.png")
    return str(root / "images" / f"{stem}.png"), str(root / "masks" / f"{stem}.png")


def test_a_pair_reads_as_image_and_class_indices(tmp_path):
    image_uri, mask_uri = write_pair(tmp_path, "a")
    image, mask = read_pair(image_uri, mask_uri, BINARY, channels=3)
    assert image.shape == (12, 10, 3) and image.dtype == np.uint8
    assert mask.shape == (12, 10) and set(np.unique(mask)) <= {0, 1}
    gray, _ = read_pair(image_uri, mask_uri, BINARY, channels=1)
    assert gray.shape == (12, 10, 1)


def test_each_failure_names_its_file(tmp_path):
    image_uri, mask_uri = write_pair(tmp_path, "a", mask=np.full((12, 10), 7, np.uint8))
    with pytest.raises(MaskValueError, match=f"{mask_uri}.*7"):
        read_pair(image_uri, mask_uri, BINARY, channels=3)
    image_uri, mask_uri = write_pair(tmp_path, "b", mask=np.zeros((5, 10), np.uint8))
    with pytest.raises(ValueError) as err:
        read_pair(image_uri, mask_uri, BINARY, channels=3)
    assert str(err.value).startswith(f"{mask_uri}: mask is 10x5 but its image {image_uri}")
    with pytest.raises(OSError, match=f"^{tmp_path}/masks/none.png: cannot read"):
        read_pair(image_uri, str(tmp_path / "masks" / "none.png"), BINARY, channels=3)


def test_a_batch_leaves_out_bad_pairs_by_their_image(tmp_path):
    for stem in ("a", "b", "c"):
        write_pair(tmp_path, stem)
    (tmp_path / "images" / "b.png").write_bytes(b"not an image")
    items = pair_items(str(tmp_path), pair_images_and_masks(tmp_path))
    rows, errors = read_pairs(items, BINARY, channels=3)
    assert rows["key"] == ["a", "c"] and len(rows["image"]) == len(rows["mask"]) == 2
    bad = str(tmp_path / "images" / "b.png")
    assert list(errors) == [bad] and errors[bad].startswith(bad)
    columns = {k: np.array([item[k] for item in items]) for k in ("key", "image", "mask")}
    again, errors_again = read_pairs(columns, BINARY, channels=3)  # a Ray Data numpy batch
    assert again["key"] == rows["key"] and errors_again == errors


def test_an_image_confusion_leaves_out_ignored_pixels_and_refuses_other_sizes():
    truth = np.array([[0, 1], [255, 1]], np.uint8)
    pred = np.array([[0, 0], [1, 1]], np.uint8)
    assert image_confusion(pred, truth, 2).tolist() == [[1, 0], [1, 1]]
    with pytest.raises(ValueError, match="m.png: mask is 2x2 but its image i.png is 3x2"):
        image_confusion(np.zeros((2, 3), np.uint8), truth, 2, mask_uri="m.png", image_uri="i.png")


def test_the_gate_scores_with_evaluates_cpu_defaults_in_fp32():
    def evaluate_config(*flags: str) -> EvaluateConfig:
        argv = ["--model", "models:/unet@champion", "--data", "/d", *flags]
        return parse_config(EvaluateConfig, argv, prog="evaluate", description="")

    default = evaluate_config()
    assert default.tile_for(use_gpu=False) == GATE_SETTINGS.tile_size
    assert (default.tile_overlap, default.tta) == (GATE_SETTINGS.tile_overlap, GATE_SETTINGS.tta)
    assert default.amp == "auto" and GATE_SETTINGS.amp is False  # the one difference
    same = evaluate_config(*GATE_SETTINGS.evaluate_flags().split())
    assert same.tile_for(use_gpu=True) == GATE_SETTINGS.tile_size  # on any device
    assert (same.tile_overlap, same.tta) == (GATE_SETTINGS.tile_overlap, GATE_SETTINGS.tta)
    assert same.amp_flag is GATE_SETTINGS.amp
