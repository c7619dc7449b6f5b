"""A few real pairs from each set in ../shared/data, read with class maps built in code."""

import numpy as np
import pytest

from tests.conftest import SHARED_DATA
from unet_core.classes import ClassMap
from unet_core.config import IGNORE_INDEX
from unet_core.data import pair_images_and_masks, read_image, read_mask

CAMVID_NAMES = [
    "sky",
    "building",
    "pole",
    "road",
    "pavement",
    "tree",
    "sign",
    "fence",
    "car",
    "pedestrian",
    "bicyclist",
]


def _root(rel):
    root = SHARED_DATA / rel
    if not root.is_dir():
        pytest.skip(f"{root} is absent: the shared real data sets are not on this machine")
    return root


def test_isbi_pairs_are_grayscale_binary():
    root = _root("isbi2012/train")
    pairs = pair_images_and_masks(root)
    assert len(pairs) == 25
    cm = ClassMap.binary(("membrane", "cell"), (0, 255))
    for p in pairs[:3]:
        image = read_image(root / p.image, channels=1)
        mask = read_mask(root / p.mask, cm)
        assert image.shape == (512, 512, 1) and mask.shape == (512, 512)
        assert set(np.unique(mask)) == {0, 1}


def test_camvid_index_masks_with_ignored_value():
    root = _root("camvid/val")
    pairs = pair_images_and_masks(root)
    assert len(pairs) == 101
    cm = ClassMap.from_names(CAMVID_NAMES, ignore_values=(11,))
    seen = set()
    for p in pairs[:5]:
        image = read_image(root / p.image, channels=3)
        mask = read_mask(root / p.mask, cm)
        assert image.shape == (360, 480, 3) and mask.shape == (360, 480)
        seen |= set(np.unique(mask).tolist())
    assert seen <= set(range(11)) | {IGNORE_INDEX}
    assert IGNORE_INDEX in seen
