"""The synthetic set: seeded, pairable, values from its class map, reproducible."""

import hashlib

import numpy as np
import pytest
from PIL import Image

from unet_core.classes import ClassMap
from unet_core.data import pair_images_and_masks, read_image, read_mask
from unet_core.synthetic import make_synthetic_dataset, synthetic_class_map


def _digest(root):
    h = hashlib.sha1()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_seeded_and_deterministic(tmp_path):
    make_synthetic_dataset(tmp_path / "a", num_images=4, size=48, seed=3)
    make_synthetic_dataset(tmp_path / "b", num_images=4, size=48, seed=3)
    make_synthetic_dataset(tmp_path / "c", num_images=4, size=48, seed=4)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")


def test_pairable_with_the_written_class_map(tmp_path):
    cm = make_synthetic_dataset(tmp_path, num_images=5, size=(40, 56), seed=0)
    assert ClassMap.from_file(tmp_path / "classes.json") == cm
    assert cm.names == ["background", "ellipse", "rectangle"] and cm.values == [0, 127, 255]
    pairs = pair_images_and_masks(tmp_path)
    assert [p.key for p in pairs] == [f"synth_{i:04d}" for i in range(5)]
    seen = set()
    for p in pairs:
        image = read_image(tmp_path / p.image, channels=3)
        mask = read_mask(tmp_path / p.mask, cm)
        assert image.shape == (40, 56, 3) and mask.shape == (40, 56)
        seen |= set(np.unique(mask).tolist())
        # shapes differ from the background in colour
        assert image[mask == 1].mean(axis=0)[0] > image[mask == 0].mean(axis=0)[0] + 30
    assert seen == {0, 1, 2}


@pytest.mark.parametrize("num_classes", [2, 5])
def test_every_class_appears_in_every_image(tmp_path, num_classes):
    cm = make_synthetic_dataset(tmp_path, num_images=3, size=64, num_classes=num_classes)
    assert cm.num_classes == num_classes and cm.values[-1] == 255
    for p in pair_images_and_masks(tmp_path):
        assert set(np.unique(read_mask(tmp_path / p.mask, cm)).tolist()) == set(range(num_classes))


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_default_set_is_reproducible_and_well_formed(tmp_path):
    """The defaults (24 images of 96 x 96, 3 classes, seed 0): exactly the pairs and the class map,
    each image its own draw, byte-identical when made again, different for another seed."""
    cm = make_synthetic_dataset(tmp_path / "a")
    make_synthetic_dataset(tmp_path / "b")
    make_synthetic_dataset(tmp_path / "c", seed=1)
    a, b, c = (_files(tmp_path / d) for d in "abc")
    names = [f"synth_{i:04d}.png" for i in range(24)]
    expected = {"classes.json", *(f"{d}/{n}" for d in ("images", "masks") for n in names)}
    assert set(a) == set(c) == expected  # nothing else is written
    assert a == b  # same seed: the same bytes, file by file
    assert all(a[f"images/{n}"] != c[f"images/{n}"] for n in names)  # another seed: new images
    assert len({a[f"images/{n}"] for n in names}) == 24  # no image repeats within a set
    assert cm == synthetic_class_map(3)
    pairs = pair_images_and_masks(tmp_path / "a")
    assert [p.key for p in pairs] == [n.removesuffix(".png") for n in names]
    for p in pairs:
        with Image.open(tmp_path / "a" / p.image) as im:
            assert (im.mode, im.size) == ("RGB", (96, 96))
        with Image.open(tmp_path / "a" / p.mask) as im:
            assert (im.mode, im.size) == ("L", (96, 96))
            assert set(np.unique(np.asarray(im)).tolist()) == set(cm.values)  # all 3 classes


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"num_classes must be in 2\.\.5"):
        make_synthetic_dataset(tmp_path, num_classes=6)
    with pytest.raises(ValueError, match="at least 16"):
        make_synthetic_dataset(tmp_path, size=8)
