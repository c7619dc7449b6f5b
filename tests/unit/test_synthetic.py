import hashlib

from unet_core.classes import ClassMap
from unet_core.data import pair_images_and_masks, read_mask
from unet_core.synthetic import make_synthetic_dataset


def _digest(root):
    h = hashlib.sha1()
    for p in sorted(root.rglob("*.png")):
        h.update(p.read_bytes())
    return h.hexdigest()


def test_seeded_and_pairable(tmp_path):
    cm = make_synthetic_dataset(tmp_path / "a", num_images=5, size=48, seed=3)
    make_synthetic_dataset(tmp_path / "b", num_images=5, size=48, seed=3)
    make_synthetic_dataset(tmp_path / "c", num_images=5, size=48, seed=4)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")
    pairs = pair_images_and_masks(tmp_path / "a")
    assert len(pairs) == 5
    assert ClassMap.from_file(tmp_path / "a" / "classes.json") == cm
    seen = set()
    for p in pairs:
        seen |= set(read_mask(tmp_path / "a" / p.mask, cm).ravel().tolist())
    assert seen == {0, 1, 2}
