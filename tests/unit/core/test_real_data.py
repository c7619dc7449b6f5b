"""A few real pairs from each shared set, read with class maps built in code.

The sets live outside the repository (../shared/data from the project root, or
$UNET_SHARED_DATA); the tests skip when they are absent, and fail in CI (CI=true).
"""

import numpy as np
import pytest

from tests.support import shared_data
from unet_core.classes import ClassMap
from unet_core.config import IGNORE_INDEX
from unet_core.data import pair_images_and_masks, read_image, read_mask, split_pairs

CAMVID_NAMES = [
    "sky",
    "building",
    "pole",
    "road",
    "pavement",
    "tree",
    "sign/symbol",
    "fence",
    "car",
    "pedestrian",
    "bicyclist",
]


def test_isbi_pairs_are_grayscale_with_membrane_and_cell():
    root = shared_data("isbi2012/train")
    pairs = pair_images_and_masks(root)
    assert len(pairs) == 25 and pairs[0].key == "slice_00"
    cm = ClassMap.binary(("membrane", "cell"), (0, 255))
    for p in pairs[:3]:
        image = read_image(root / p.image, channels=1)
        mask = read_mask(root / p.mask, cm)
        assert image.shape == (512, 512, 1) and image.dtype == np.uint8
        assert mask.shape == (512, 512) and mask.dtype == np.uint8
        assert set(np.unique(mask).tolist()) == {0, 1}
        assert read_image(root / p.image, channels=3).shape == (512, 512, 3)


def test_camvid_index_masks_with_the_unlabelled_value_ignored():
    root = shared_data("camvid/val")
    pairs = pair_images_and_masks(root)
    assert len(pairs) == 101
    cm = ClassMap.from_names(CAMVID_NAMES, ignore_values=(11,))
    seen = set()
    for p in pairs[:4]:
        image = read_image(root / p.image, channels=3)
        mask = read_mask(root / p.mask, cm)
        assert image.shape == (360, 480, 3) and mask.shape == (360, 480)
        seen |= set(np.unique(mask).tolist())
    assert seen <= set(range(11)) | {IGNORE_INDEX}
    assert IGNORE_INDEX in seen  # value 11 (unlabelled) became the ignore index
    assert len(seen) > 5


def test_camvid_without_ignore_values_names_the_unknown_value():
    root = shared_data("camvid/val")
    pair = pair_images_and_masks(root)[0]
    with pytest.raises(ValueError, match=rf"{pair.key}\.png: mask values \[11\]"):
        read_mask(root / pair.mask, ClassMap.from_names(CAMVID_NAMES))


def test_real_splits_hold_no_key_twice():
    for rel in ("isbi2012/train", "camvid/val"):
        pairs = pair_images_and_masks(shared_data(rel))
        train, val = split_pairs(pairs, val_fraction=0.2, seed=0)
        assert val and train
        assert not {p.key for p in train} & {p.key for p in val}
        assert len(train) + len(val) == len(pairs)


@pytest.mark.parametrize(
    ("rel", "class_map", "names"),
    [
        ("isbi2012/train", "isbi2012.classes.json", ["membrane", "cell"]),
        ("camvid/val", "camvid.classes.json", [n.split("/")[0] for n in CAMVID_NAMES]),
    ],
)
def test_the_recipes_class_maps_read_their_data(rel, class_map, names):
    """configs/<task>.classes.json: the classes in the data's order, every mask value known."""
    from tests.support import REPO_ROOT

    root = shared_data(rel)
    cm = ClassMap.from_file(REPO_ROOT / "configs" / class_map)
    assert cm.names == names
    for p in pair_images_and_masks(root)[:3]:
        mask = read_mask(root / p.mask, cm)  # raises, naming the value, on an unknown one
        assert set(np.unique(mask).tolist()) <= set(range(len(names))) | {IGNORE_INDEX}
