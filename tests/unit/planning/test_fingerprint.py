"""The fingerprint on hand-made masks and images with known answers: sizes, frequencies,
objects and touching objects, a vertical layout, intensities; JSON and determinism."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from jobs.planning.fingerprint import Fingerprint, build_fingerprint, intensity_stats
from jobs.planning.names import summarise_groups
from jobs.planning.objects import objects_of
from jobs.planning.scan import tally_pairs
from jobs.planning.tally import Tally
from unet_core.classes import ClassInfo, ClassMap

NAMES = ["background", "sky", "road"]


def fingerprint_of(tally: Tally, keys=("a",)) -> Fingerprint:
    return build_fingerprint(
        tally,
        root="/data",
        seed=0,
        class_names=NAMES[: tally.num_classes],
        name_groups=summarise_groups(list(keys)),
        intensity=intensity_stats(tally, 0),
    )


def squares(size: int = 64) -> np.ndarray:
    """Class 1: two 10x10 squares one pixel apart, and one far away; class 2: a 4x4 square."""
    mask = np.zeros((size, size), np.uint8)
    mask[5:15, 5:15] = 1
    mask[5:15, 16:26] = 1  # one background column between them: touching
    mask[40:50, 40:50] = 1  # far from both
    mask[30:34, 2:6] = 2
    return mask


def test_objects_and_touching_on_hand_made_squares():
    areas, touching = objects_of(squares() == 1)
    assert sorted(areas.tolist()) == [100, 100, 100]
    assert touching == 2
    far = np.zeros((64, 64), bool)
    far[5:15, 5:15] = far[5:15, 19:29] = True  # four pixels apart: beyond TOUCH_GAP
    assert objects_of(far)[1] == 0
    corner = np.zeros((8, 8), bool)
    corner[0:2, 0:2] = corner[2:4, 2:4] = True  # corner to corner: two objects, touching
    assert objects_of(corner) == (pytest.approx([4, 4]), 2)


def test_class_frequencies_object_sizes_and_touching_fractions():
    tally = Tally(3)
    image = np.zeros((64, 64, 1), np.uint8)
    for key in ("a", "b"):
        tally.add_header("L", 64, 64)
        tally.add_sample(key, image, squares(), seed=0)
    fp = fingerprint_of(tally, keys=["a", "b"])
    background, one, two = fp.classes
    assert one.pixel_fraction == pytest.approx(300 / 4096, rel=1e-5)
    assert two.pixel_fraction == pytest.approx(16 / 4096, rel=1e-5)
    assert background.pixel_fraction == pytest.approx(1 - 316 / 4096, rel=1e-5)
    assert one.objects_per_image == 3 and one.area_mean == 100
    assert one.area_median == pytest.approx(100, rel=0.1)  # log-spaced bins: about 9%
    assert one.touching_fraction == pytest.approx(2 / 3, rel=1e-5)
    assert two.touching_fraction == 0 and two.area_mean == 16
    assert fp.sampled == 2 and fp.ignored_fraction == 0


def test_sizes_median_spread_and_aspect_from_headers():
    tally = Tally(2)
    for h, w in [(100, 200)] * 18 + [(50, 50), (400, 800)]:
        tally.add_header("RGB", h, w)
    fp = fingerprint_of(tally)
    assert (fp.sizes.median_height, fp.sizes.median_width) == (100, 200)
    assert (fp.sizes.p5_height, fp.sizes.p95_height) == (50, 100)
    assert fp.sizes.p95_width == 200 and fp.sizes.images == 20
    assert fp.sizes.median_aspect == pytest.approx(2.0, rel=0.02)
    assert fp.channels == {"3": 20} and fp.dtypes == {"uint8": 20}


def road_scene(rng: np.random.Generator) -> np.ndarray:
    """Sky (1) on top, road (2) at the bottom, the horizon at a random height."""
    mask = np.zeros((40, 60), np.uint8)
    horizon = int(rng.integers(12, 28))
    mask[: horizon - 4] = 1
    mask[horizon + 4 :] = 2
    return mask


def test_a_vertical_layout_is_found_and_random_placement_is_not():
    rng = np.random.default_rng(0)
    image = np.zeros((40, 60, 1), np.uint8)
    roads, blobs = Tally(3), Tally(3)
    for i in range(12):
        roads.add_sample(f"r{i}", image, road_scene(rng), seed=0)
        blob = np.zeros((40, 60), np.uint8)
        for cls in (1, 2):
            y, x = rng.integers(0, 32), rng.integers(0, 52)
            blob[y : y + 8, x : x + 8] = cls
        blobs.add_sample(f"b{i}", image, blob, seed=0)
    fp = fingerprint_of(roads)
    assert fp.vertical_layout
    assert ("sky", "road", 1.0, 12) in [(p.above, p.below, p.fraction, p.images) for p in fp.layout]
    assert fp.classes[1].mean_row < 0.3 < 0.7 < fp.classes[2].mean_row
    assert not fingerprint_of(blobs).vertical_layout


def test_intensity_statistics_of_12_bit_images_keep_their_values():
    tally = Tally(2)
    mask = np.zeros((32, 32), np.uint8)
    for i in range(4):
        image = np.full((32, 32, 1), 1000, np.uint16)
        image[:16] = 3000
        image[0, 0] = 4095 if i == 0 else 1000
        tally.add_sample(f"k{i}", image, mask, seed=0)
    stats = fingerprint_of(tally).intensity
    assert stats.dtype == "uint16" and stats.channels == 1 and stats.bit_depth == 12
    assert stats.max == (4095.0,) and stats.min == (1000.0,)
    assert stats.mean[0] == pytest.approx(2000, rel=0.01)
    assert stats.p_low == (1000.0,) and stats.p_high == (3000.0,)


def png(arr: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(arr).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def folder(tmp_path):
    """Twelve road scenes in a folder, nine of them sampled, the last with a corrupt image."""
    class_map = ClassMap((ClassInfo("background", 0), ClassInfo("sky", 1), ClassInfo("road", 2)))
    rng = np.random.default_rng(1)
    rows = []
    for i in range(12):
        image = tmp_path / f"scene_{i:02d}.png"
        mask = tmp_path / f"scene_{i:02d}_mask.png"
        image.write_bytes(
            b"not an image" if i == 11 else png(rng.integers(0, 255, (40, 60, 3), np.uint8))
        )
        mask.write_bytes(png(road_scene(rng)))
        rows.append(
            {"key": image.stem, "image": str(image), "mask": str(mask), "sampled": i % 4 != 2}
        )
    return rows, class_map


def test_the_same_pairs_give_the_same_fingerprint_in_any_merge_order(folder):
    rows, class_map = folder
    whole = tally_pairs(rows, class_map=class_map, seed=3)
    a = tally_pairs(rows[:5], class_map=class_map, seed=3)
    b = tally_pairs(rows[5:], class_map=class_map, seed=3)
    keys = [r["key"] for r in rows]
    one = fingerprint_of(whole, keys).to_json()
    assert one == fingerprint_of(Tally.from_bytes(b.to_bytes()).merge(a), keys).to_json()
    fp = Fingerprint.from_json(one)
    assert fp.to_json() == one  # JSON round trip
    assert fp.pairs == 12 and fp.sampled == 8 and fp.failures == 1
    assert "scene_11.png" in fp.failure_examples[0]
    assert fp.sizes.median_height == 40 and fp.decoded == {"3xuint8": 8}
    assert fp.vertical_layout and fp.name_groups.groups == 12
    other = tally_pairs(rows, class_map=class_map, seed=4)  # another seed: other pixels drawn
    assert fingerprint_of(other, keys).intensity != fp.intensity
