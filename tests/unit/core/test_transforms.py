"""Paired transforms keep image and mask aligned, are seeded, and never blend mask values."""

import numpy as np
import pytest
import torch

from unet_core.config import IGNORE_INDEX, PreprocessConfig, TrainConfig
from unet_core.transforms import (
    CenterCrop,
    ColorJitter,
    Compose,
    PadTo,
    RandomCrop,
    RandomFlip,
    RandomRotate90,
    Resize,
    eval_transforms,
    to_tensors,
    transforms_for_training,
)

# Class colours; none is black, the image pad value.
COLORS = np.array([[10, 20, 30], [200, 40, 60], [90, 250, 120], [40, 40, 255]], dtype=np.uint8)


def _pair(rng, h=37, w=53, block=1):
    """A random class mask (in blocks of ``block`` pixels) and the image that colours it."""
    small = rng.integers(0, len(COLORS), (-(-h // block), -(-w // block)), dtype=np.uint8)
    mask = np.repeat(np.repeat(small, block, 0), block, 1)[:h, :w]
    return COLORS[mask], mask


def _assert_exactly_aligned(image, mask):
    valid = mask != IGNORE_INDEX
    np.testing.assert_array_equal(image[valid], COLORS[mask[valid]])
    assert (image[~valid] == 0).all()


def _interior(mask, radius=2):
    """Pixels whose (2r+1)^2 neighbourhood holds one label (away from region borders)."""
    h, w = mask.shape
    padded = np.pad(mask.astype(np.int16), radius, constant_values=-1)
    same = np.ones((h, w), bool)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            same &= padded[dy : dy + h, dx : dx + w] == mask
    return same


def _random_pipeline(rng):
    """1-5 random geometric transforms with random parameters; whether one of them resizes."""
    steps, resized = [], False
    for _ in range(int(rng.integers(1, 6))):
        kind = int(rng.integers(0, 6))
        size = (int(rng.integers(8, 48)), int(rng.integers(8, 48)))
        if kind == 0:
            steps.append(RandomCrop(size))
        elif kind == 1:
            steps.append(PadTo(size))
        elif kind == 2:
            steps.append(CenterCrop(size))
        elif kind == 3:
            steps.append(RandomFlip(float(rng.random()), float(rng.random())))
        elif kind == 4:
            steps.append(RandomRotate90(float(rng.random())))
        else:
            steps.append(Resize(size, ["bilinear", "area"][int(rng.integers(0, 2))]))
            resized = True
    return Compose(steps), resized


@pytest.mark.parametrize("chunk", range(4))
def test_random_transform_sequences_keep_image_and_mask_aligned(chunk):
    """Property test over 200 seeds: the image stays the colour lookup of the mask."""
    for seed in range(chunk * 50, chunk * 50 + 50):
        rng = np.random.default_rng(seed)
        h, w = int(rng.integers(6, 60)), int(rng.integers(6, 60))
        # Blocks of 6 px so that a resize (at most 2x down here) leaves some region interiors.
        image, mask = _pair(rng, h, w, block=6 if seed % 2 else 1)
        pipeline, resized = _random_pipeline(rng)
        out_img, out_mask = pipeline(image, mask, rng)
        assert out_img.shape[:2] == out_mask.shape and out_img.dtype == np.uint8
        assert set(np.unique(out_mask)) <= {*np.unique(mask).tolist(), IGNORE_INDEX}, pipeline
        if not resized:
            _assert_exactly_aligned(out_img, out_mask)
            continue
        inner = _interior(out_mask, radius=2) & (out_mask != IGNORE_INDEX)
        diff = np.abs(out_img[inner].astype(int) - COLORS[out_mask[inner]].astype(int))
        assert diff.size == 0 or diff.max() <= 2, (seed, pipeline)


@pytest.mark.parametrize("seed", range(10))
def test_random_crop_output_size_and_padding(seed):
    rng = np.random.default_rng(seed)
    image, mask = _pair(rng, 20, 50)
    out_img, out_mask = RandomCrop((32, 40))(image, mask, rng)
    assert out_img.shape == (32, 40, 3) and out_mask.shape == (32, 40)
    assert (out_mask == IGNORE_INDEX).sum() == 32 * 40 - 20 * 40  # height padded by 12 rows
    _assert_exactly_aligned(out_img, out_mask)


def test_random_crop_pads_at_random_offsets():
    image, mask = _pair(np.random.default_rng(0), 10, 10)
    tops = set()
    for seed in range(30):
        _, out_mask = RandomCrop(16)(image, mask, np.random.default_rng(seed))
        tops.add(int(np.argmax((out_mask != IGNORE_INDEX).any(axis=1))))
    assert len(tops) > 2


def test_pad_to_and_center_crop():
    rng = np.random.default_rng(1)
    image, mask = _pair(rng, 5, 7)
    out_img, out_mask = PadTo((8, 9))(image, mask, rng)
    assert out_img.shape == (8, 9, 3)
    np.testing.assert_array_equal(out_mask[:5, :7], mask)
    assert (out_mask[5:] == IGNORE_INDEX).all() and (out_img[:, 7:] == 0).all()
    assert PadTo(4)(image, mask, rng)[1] is mask
    image, mask = _pair(rng, 10, 12)
    out_img, out_mask = CenterCrop((4, 6))(image, mask, rng)
    np.testing.assert_array_equal(out_mask, mask[3:7, 3:9])
    np.testing.assert_array_equal(out_img, image[3:7, 3:9])


def test_resize_uses_nearest_for_masks_and_handles_one_channel():
    rng = np.random.default_rng(0)
    image, mask = _pair(rng, 40, 40)
    out_img, out_mask = Resize((17, 23), "area")(image, mask, rng)
    assert out_img.shape == (17, 23, 3) and out_mask.shape == (17, 23)
    assert set(np.unique(out_mask)) <= set(np.unique(mask))
    _, up_mask = Resize(80)(image, mask, rng)
    assert set(np.unique(up_mask)) <= {0, 1, 2, 3}
    gray = image[:, :, :1]
    out_gray, _ = Resize((20, 10))(gray, mask, rng)
    assert out_gray.shape == (20, 10, 1)
    with pytest.raises(ValueError, match="image_interp"):
        Resize(8, "cubic")


def test_flips_and_rotations_with_probability_one():
    rng = np.random.default_rng(0)
    image, mask = _pair(rng, 5, 8)
    out_img, out_mask = RandomFlip(1.0, 1.0)(image, mask, rng)
    np.testing.assert_array_equal(out_mask, mask[::-1, ::-1])
    np.testing.assert_array_equal(out_img, image[::-1, ::-1])
    out_img, out_mask = RandomFlip(0.0, 0.0)(image, mask, rng)
    assert out_mask is mask
    out_img, out_mask = RandomRotate90(1.0)(image, mask, rng)
    assert out_mask.shape in ((8, 5), (5, 8)) and out_img.shape[:2] == out_mask.shape
    _assert_exactly_aligned(out_img, out_mask)


def test_jitter_changes_only_the_image():
    image, mask = _pair(np.random.default_rng(2))
    out_img, out_mask = ColorJitter(0.5, 0.5)(image, mask, np.random.default_rng(3))
    assert out_mask is mask and out_img.shape == image.shape and out_img.dtype == np.uint8
    assert not np.array_equal(out_img, image)
    same, _ = ColorJitter(0.0, 0.0)(image, mask, np.random.default_rng(3))
    np.testing.assert_array_equal(same, image)


def test_same_seed_same_output_different_seed_different_output():
    image, mask = _pair(np.random.default_rng(1), 64, 64)
    t = transforms_for_training(TrainConfig(crop_size=32))
    a = t(image, mask, np.random.default_rng(7))
    b = t(image, mask, np.random.default_rng(7))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    others = [t(image, mask, np.random.default_rng(s))[1] for s in range(8, 12)]
    assert any(not np.array_equal(a[1], o) for o in others)


def test_train_and_eval_pipelines():
    rng = np.random.default_rng(0)
    image, mask = _pair(rng, 20, 30)
    out_img, out_mask = transforms_for_training(TrainConfig(crop_size=16))(image, mask, rng)
    assert out_img.shape == (16, 16, 3) and out_mask.shape == (16, 16)
    no_jitter = TrainConfig(crop_size=0, brightness=0.0, contrast=0.0)
    out_img, out_mask = transforms_for_training(no_jitter)(image, mask, rng)
    assert sorted(out_mask.shape) == [20, 30]
    _assert_exactly_aligned(out_img, out_mask)
    assert eval_transforms()(image, mask, rng)[1] is mask
    out_img, out_mask = eval_transforms(24)(image, mask, rng)
    assert out_mask.shape == (24, 24)
    assert (out_mask[20:] == IGNORE_INDEX).all()


def test_mismatched_image_and_mask_are_refused():
    rng = np.random.default_rng(0)
    image, _ = _pair(rng, 10, 10)
    with pytest.raises(ValueError, match=r"image \(10, 10, 3\) and mask \(10, 9\) do not match"):
        Compose([])(image, np.zeros((10, 9), np.uint8), rng)


def test_invalid_parameters():
    with pytest.raises(ValueError, match="probability"):
        RandomFlip(1.5)
    with pytest.raises(ValueError, match="probability"):
        RandomRotate90(-0.1)
    with pytest.raises(ValueError, match="size must be positive"):
        RandomCrop(0)
    with pytest.raises(ValueError, match="brightness and contrast"):
        ColorJitter(brightness=1.5)


def test_to_tensors():
    image, mask = _pair(np.random.default_rng(4), 8, 9)
    image, mask = image[:, ::-1], mask[:, ::-1]  # negative strides must be handled
    x, y = to_tensors(image, mask, PreprocessConfig())
    assert tuple(x.shape) == (3, 8, 9) and x.dtype == torch.float32
    assert tuple(y.shape) == (8, 9) and y.dtype == torch.int64
    np.testing.assert_array_equal(y.numpy(), mask)
    expected = (image[0, 0, 0] / 255 - 0.5) / 0.25
    assert abs(float(x[0, 0, 0]) - expected) < 1e-5
    x1, _ = to_tensors(image[:, :, :1], mask, PreprocessConfig.for_channels(1))
    assert tuple(x1.shape) == (1, 8, 9)
