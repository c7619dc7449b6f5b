"""Connected components and the U-Net border weight map on hand-made masks, against brute force."""

import math
from collections import deque

import numpy as np
import pytest

from unet_core.config import IGNORE_INDEX
from unet_core.weightmap import (
    BORDER_TOLERANCE,
    border_weight_map,
    class_balance_weights,
    label_components,
)


def _flood_fill(binary, connectivity):
    """Reference labelling: breadth-first search from each unlabelled pixel in raster order."""
    h, w = binary.shape
    steps = [(0, 1), (1, 0), (0, -1), (-1, 0)]
    if connectivity == 8:
        steps += [(1, 1), (1, -1), (-1, 1), (-1, -1)]
    labels, count = np.zeros((h, w), np.int32), 0
    for y in range(h):
        for x in range(w):
            if binary[y, x] and not labels[y, x]:
                count += 1
                labels[y, x] = count
                queue = deque([(y, x)])
                while queue:
                    cy, cx = queue.popleft()
                    for dy, dx in steps:
                        ny, nx = cy + dy, cx + dx
                        if 0 <= ny < h and 0 <= nx < w and binary[ny, nx] and not labels[ny, nx]:
                            labels[ny, nx] = count
                            queue.append((ny, nx))
    return labels, count


def test_components_of_a_hand_made_image():
    image = np.array(
        [
            [1, 1, 0, 0, 1],
            [0, 1, 0, 1, 0],
            [0, 0, 0, 0, 0],
            [1, 0, 1, 1, 1],
            [1, 0, 1, 0, 1],
        ],
        bool,
    )
    labels, count = label_components(image)  # the two pixels of (0, 4), (1, 3) touch by a corner
    assert count == 5
    np.testing.assert_array_equal(
        labels,
        [
            [1, 1, 0, 0, 2],
            [0, 1, 0, 3, 0],
            [0, 0, 0, 0, 0],
            [4, 0, 5, 5, 5],
            [4, 0, 5, 0, 5],
        ],
    )
    labels8, count8 = label_components(image, connectivity=8)
    assert count8 == 4 and labels8[0, 4] == labels8[1, 3] == 2
    assert label_components(np.zeros((3, 4), bool))[1] == 0
    with pytest.raises(ValueError, match="connectivity must be 4 or 8"):
        label_components(image, connectivity=6)


def test_a_snake_needs_many_union_rounds():
    """A serpentine component whose smallest root is far (in edges) from its other end."""
    snake = np.zeros((21, 21), bool)
    snake[::4] = True
    for i, row in enumerate(range(0, 20, 4)):
        snake[row : row + 5, 20 if i % 2 == 0 else 0] = True
    labels, count = label_components(snake)
    assert count == 1 and (labels[snake] == 1).all() and (labels[~snake] == 0).all()


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("seed", range(6))
def test_components_match_flood_fill(seed, connectivity):
    rng = np.random.default_rng(seed)
    binary = rng.random((int(rng.integers(1, 40)), int(rng.integers(1, 40)))) < 0.55
    labels, count = label_components(binary, connectivity=connectivity)
    expected, expected_count = _flood_fill(binary, connectivity)
    assert count == expected_count
    np.testing.assert_array_equal(labels, expected)


def _two_squares(gap=4, size=64):
    """Class 1 squares over rows 20..35, columns 10..19 and 20 + gap .. 29 + gap; class 0 else."""
    mask = np.zeros((size, size), np.uint8)
    mask[20:36, 10:20] = 1
    mask[20:36, 20 + gap : 30 + gap] = 1
    return mask


def test_border_weights_between_two_squares():
    """Between the squares (columns 20..23 of rows 20..35) d1 + d2 = 5 at every pixel: e.g.
    column 21 is 2 px from column 19 (left square) and 3 px from column 24 (right square), so
    w = w_c(0) + 10 * exp(-25 / 50) = w_c(0) + 6.0653."""
    mask = _two_squares()
    w = border_weight_map(mask, foreground=1, w0=10.0, sigma=5.0)
    n, n1 = mask.size, int(mask.sum())
    wc0, wc1 = n / (2 * (n - n1)), n / (2 * n1)
    np.testing.assert_allclose(class_balance_weights(mask), [wc0, wc1], rtol=1e-6)
    expected = wc0 + 10.0 * math.exp(-((2 + 3) ** 2) / (2 * 5.0**2))
    np.testing.assert_allclose(w[20:36, 20:24], expected, rtol=1e-5)
    assert w[28, 21] == pytest.approx(wc0 + 6.0653, abs=1e-4)
    np.testing.assert_allclose(w[mask == 1], wc1, rtol=1e-6)  # object pixels: w_c only
    np.testing.assert_allclose(w[63, 63], wc0, rtol=1e-6)  # far from both: w_c only
    # 3 rows above the gap: d1 = sqrt(9 + 4) to pixel (20, 19), d2 = sqrt(9 + 9) to (20, 24).
    d1, d2 = math.sqrt(13), math.sqrt(18)
    assert w[17, 21] == pytest.approx(wc0 + 10 * math.exp(-((d1 + d2) ** 2) / 50), rel=1e-5)
    plain = border_weight_map(mask, foreground=1, class_balance=False)
    assert plain[28, 21] == pytest.approx(1 + 10 * math.exp(-0.5), rel=1e-5)
    assert plain[63, 63] == 1.0 and plain[25, 15] == 1.0
    np.testing.assert_allclose(border_weight_map(mask, foreground=None), np.where(mask, wc1, wc0))


def test_ignored_pixels_weigh_nothing_and_one_object_has_no_border():
    mask = _two_squares()
    mask[:5] = IGNORE_INDEX
    w = border_weight_map(mask, foreground=1, class_balance=False)
    assert (w[:5] == 0).all() and w[28, 21] > 6
    single = np.zeros((40, 40), np.uint8)
    single[10:20, 10:20] = 1
    w = border_weight_map(single, foreground=1, class_balance=False)
    np.testing.assert_array_equal(w, 1.0)  # d2 is infinite everywhere: no border term


def _brute_force(mask, foreground, w0, sigma):
    """Eq. 2 with class_balance off, from every pixel's distance to every object pixel."""
    labels, count = label_components(mask == foreground)
    ys, xs = np.mgrid[: mask.shape[0], : mask.shape[1]]
    per_object = []
    for k in range(1, count + 1):
        oy, ox = np.nonzero(labels == k)
        d = np.sqrt((ys[..., None] - oy) ** 2 + (xs[..., None] - ox) ** 2).min(axis=-1)
        per_object.append(d)
    d = np.sort(np.stack(per_object), axis=0)
    term = w0 * np.exp(-((d[0] + d[1]) ** 2) / (2 * sigma**2))
    return np.where(mask == foreground, 1.0, 1.0 + term)


@pytest.mark.parametrize("seed", range(4))
def test_border_weights_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    mask = np.zeros((70, 90), np.uint8)
    y = int(rng.integers(0, 4))
    while y < 60:  # rows of random rectangles, 1 to 6 px apart, a few slanted by a pixel
        x, height = int(rng.integers(0, 4)), int(rng.integers(3, 12))
        while x < 80:
            width = int(rng.integers(3, 12))
            mask[y : y + height, x : x + width] = 2
            mask[y + height : y + height + 1, x + 1 : x + width - 1] = 2 * (rng.random() < 0.5)
            x += width + int(rng.integers(1, 7))
        y += height + int(rng.integers(2, 7))
    w = border_weight_map(mask, foreground=2, w0=10.0, sigma=4.0, class_balance=False)
    expected = _brute_force(mask, 2, 10.0, 4.0)
    assert label_components(mask == 2)[1] >= 3
    np.testing.assert_allclose(w, expected, atol=BORDER_TOLERANCE, rtol=1e-5)
    assert (expected > 2).sum() > 20  # the borders are there to be found


def test_invalid_arguments():
    with pytest.raises(ValueError, match="HxW mask"):
        border_weight_map(np.zeros((2, 3, 4), np.uint8), foreground=1)
    with pytest.raises(ValueError, match="sigma > 0"):
        border_weight_map(np.zeros((4, 4), np.uint8), foreground=1, sigma=0.0)


def test_the_training_jobs_batches_carry_each_crops_border_weight_map():
    """jobs/train.py --border-weight: each training batch is (x, y, w), w the border weight map
    of each (augmented) crop's own mask with the config's w0, sigma, class and balance; without
    --border-weight the batches are (x, y)."""
    from jobs.training.batches import TrainCollate, border_weights
    from unet_core.config import PreprocessConfig, TrainConfig
    from unet_core.transforms import Compose, RandomFlip

    cfg = TrainConfig(border_weight=7.0, border_sigma=3.0, border_class=1)
    masks = [_two_squares(), np.roll(_two_squares(), 7, axis=0)]
    batch = {
        "key": np.array(["a", "b"]),
        "image": np.stack([np.zeros((64, 64, 3), np.uint8)] * 2),
        "mask": np.stack(masks),
    }
    flip = Compose([RandomFlip(horizontal=1.0, vertical=0.0)])  # a known augmentation
    collate = TrainCollate(
        flip, PreprocessConfig(), seed=0, epoch=0, weights=border_weights(cfg, num_classes=2)
    )
    x, y, w = collate(batch)
    assert tuple(w.shape) == tuple(y.shape) == (2, 64, 64) and x.shape[0] == 2
    for i, mask in enumerate(masks):
        crop = mask[:, ::-1]
        np.testing.assert_array_equal(y[i].numpy(), crop)
        want = border_weight_map(crop, foreground=1, w0=7.0, sigma=3.0, num_classes=2)
        np.testing.assert_allclose(w[i].numpy(), want, rtol=1e-6)
    assert w.max() > 2 * w.min()  # the map is not flat
    plain = TrainCollate(flip, PreprocessConfig(), seed=0, epoch=0, weights=None)(batch)
    assert len(plain) == 2 and border_weights(TrainConfig(), num_classes=2) is None
