"""Warps and photometric augmentations keep image and mask aligned, are seeded, never blend mask
values, and the default TrainConfig still builds the pipeline of before."""

import numpy as np
import pytest

from tests.unit.core.test_transforms import _interior as one_label_around
from unet_core.augmentations import ColorBalance, GaussianNoise, RandomGamma, RandomWarp
from unet_core.config import IGNORE_INDEX, TrainConfig
from unet_core.transforms import (
    ColorJitter,
    Compose,
    RandomCrop,
    RandomFlip,
    RandomRotate90,
    transforms_for_training,
)

STEP = 40  # image value per class: class k is drawn as k * STEP, so round(image / STEP) is k


def _blocks(rng, h=96, w=80, block=16, classes=5, channels=1):
    """A mask of random classes in ``block``-pixel squares and the image that encodes it."""
    small = rng.integers(0, classes, (-(-h // block), -(-w // block)), dtype=np.uint8)
    mask = np.repeat(np.repeat(small, block, 0), block, 1)[:h, :w]
    image = np.repeat((mask * STEP)[:, :, None], channels, axis=2).astype(np.uint8)
    return image, mask


def _interior(mask, radius=2):
    """Pixels whose (2r+1)^2 neighbourhood holds one label (away from class edges and fill)."""
    return one_label_around(mask, radius) & (mask != IGNORE_INDEX)


def _misaligned(image, mask):
    """Interior pixels whose image value does not decode to their mask class."""
    inner = _interior(mask)
    decoded = np.rint(image[..., 0].astype(np.float32) / STEP) if image.ndim == 3 else None
    decoded = np.rint(image.astype(np.float32) / STEP) if decoded is None else decoded
    return int((decoded[inner] != mask[inner]).sum()), int(inner.sum())


WARPS = {
    "elastic": dict(elastic_p=1.0, elastic_sigma=10.0, elastic_grid=3),
    "elastic_fine_grid": dict(elastic_p=1.0, elastic_sigma=4.0, elastic_grid=4),
    "scale_rotate": dict(scale=(0.7, 1.4), degrees=180.0),
    "both": dict(scale=(0.8, 1.25), degrees=30.0, elastic_p=1.0),
}


@pytest.mark.parametrize("name", sorted(WARPS))
def test_warps_keep_image_and_mask_aligned(name):
    """Property test over 30 seeds, for a whole-image warp and for a crop with context.

    Sizes are such that a warp magnifies by less than 2 (elastic: control points 48 px apart,
    displacements of sigma 10 px): pixels 2 px away from a class edge in the output then come
    from source pixels whose bilinear neighbourhood holds their class only.
    """
    warp = RandomWarp(**WARPS[name])
    crop = 96
    inner_warp = RandomWarp((crop, crop), **WARPS[name])
    cropped = Compose([RandomCrop(crop, context=inner_warp.context(crop)), inner_warp])
    moved = 0
    for seed in range(30):
        rng = np.random.default_rng(seed)
        image, mask = _blocks(rng, 160, 144, channels=1 + 2 * (seed % 2))
        for t, shape in ((warp, mask.shape), (cropped, (crop, crop))):
            out_img, out_mask = t(image, mask, np.random.default_rng(seed))
            assert out_mask.shape == shape and out_img.shape == (*shape, image.shape[2])
            assert out_img.dtype == np.uint8 and out_mask.dtype == mask.dtype
            assert set(np.unique(out_mask)) <= {*np.unique(mask).tolist(), IGNORE_INDEX}
            bad, inner = _misaligned(out_img, out_mask)
            assert inner > 0.2 * out_mask.size and bad == 0, (name, seed, bad, inner)
            if t is warp:
                moved += (out_mask != mask).mean() > 0.05
    assert moved >= 25  # the warp did something on most seeds


def test_alignment_check_detects_a_shift():
    """Negative control: a mask four pixels off its image fails the check the tests rely on."""
    image, mask = _blocks(np.random.default_rng(0))
    bad, inner = _misaligned(image[4:], mask[:-4])
    assert inner > 0 and bad > 100


def test_warp_fill_is_ignore_and_zero():
    """Zoomed out (scale 0.5) without context, the border comes from outside the image."""
    image, mask = _blocks(np.random.default_rng(3), 64, 64)
    image = image + 10  # no class is drawn as 0, so the fill is recognisable
    out_img, out_mask = RandomWarp(scale=(0.5, 0.5))(image, mask, np.random.default_rng(0))
    outside = out_mask == IGNORE_INDEX
    assert outside[:14].all() and outside[-14:].all() and outside[:, :14].all()
    assert not outside[18:46, 18:46].any()
    assert (out_img[:14] == 0).all() and (out_img[:, -14:] == 0).all()


def test_context_covers_rotation_and_scale():
    """With the margin of `context`, a crop of a large image gets no fill from any rotation."""
    image, mask = _blocks(np.random.default_rng(5), 300, 300)
    warp = RandomWarp((64, 64), scale=(0.7, 1.3), degrees=180.0)
    m = warp.context(64)
    assert m == int(np.ceil(32 * np.sqrt(2) / 0.7 - 32))
    window = (slice(100, 164 + 2 * m), slice(90, 154 + 2 * m))  # inside the image
    for seed in range(50):
        _, out_mask = warp(image[window], mask[window], np.random.default_rng(seed))
        assert out_mask.shape == (64, 64) and not (out_mask == IGNORE_INDEX).any(), seed
    # The margin is tight: zoomed out by 0.7, a window 2 px short of it reads outside.
    zoom = RandomWarp((64, 64), scale=(0.7, 0.7))
    m = zoom.context(64)
    for side, fill in ((64 + 2 * m, False), (62 + 2 * m, True)):
        _, out_mask = zoom(image[:side, :side], mask[:side, :side], np.random.default_rng(0))
        assert (out_mask == IGNORE_INDEX).any() == fill


@pytest.mark.parametrize("size", [(40, 40), (20, 70), (200, 150)])
def test_context_crop_centres_like_a_plain_crop(size):
    """For images at least as large as the crop, the inner window is the plain crop's."""
    image, mask = _blocks(np.random.default_rng(1), *size)
    for seed in range(10):
        plain = RandomCrop(32)(image, mask, np.random.default_rng(seed))
        wide = RandomCrop(32, context=9)(image, mask, np.random.default_rng(seed))
        assert wide[1].shape == (50, 50)
        if min(size) >= 32:
            np.testing.assert_array_equal(wide[1][9:41, 9:41], plain[1])
            np.testing.assert_array_equal(wide[0][9:41, 9:41], plain[0])
        else:  # the image sits somewhere inside the inner window, padded around
            inner = wide[1][9:41, 9:41]
            assert (inner != IGNORE_INDEX).sum() == min(size[0], 32) * min(size[1], 32)


@pytest.mark.parametrize(
    "transform",
    [
        RandomWarp(elastic_p=1.0),
        RandomWarp(scale=(0.8, 1.2), degrees=90.0),
        RandomGamma(0.5),
        GaussianNoise(8.0),
        ColorBalance(0.2, 0.4),
    ],
    ids=repr,
)
def test_same_seed_same_output(transform):
    image, mask = _blocks(np.random.default_rng(2), channels=3)
    a = transform(image, mask, np.random.default_rng(11))
    b = transform(image, mask, np.random.default_rng(11))
    c = transform(image, mask, np.random.default_rng(12))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_warps_accept_grayscale_hxw():
    image, mask = _blocks(np.random.default_rng(4))
    out_img, out_mask = RandomWarp(elastic_p=1.0)(image[:, :, 0], mask, np.random.default_rng(0))
    assert out_img.shape == mask.shape == out_mask.shape
    bad, _ = _misaligned(out_img, out_mask)
    assert bad == 0


def test_photometric_changes_only_the_image():
    image, mask = _blocks(np.random.default_rng(6), channels=3)
    image = image + 20
    for t in (RandomGamma(0.5), GaussianNoise(5.0)):
        out_img, out_mask = t(image, mask, np.random.default_rng(0))
        assert out_mask is mask and out_img.shape == image.shape and out_img.dtype == np.uint8
        assert not np.array_equal(out_img, image)
    same, _ = RandomGamma(0.0)(image, mask, np.random.default_rng(0))
    np.testing.assert_array_equal(same, image)
    noisy, _ = GaussianNoise(5.0)(image, mask, np.random.default_rng(0))
    diff = noisy.astype(float) - image
    assert abs(diff.mean()) < 0.2 and 4.5 < diff.std() < 5.5
    # gamma > 1 darkens mid-tones, < 1 brightens them; 0 and 255 stay put
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
    outs = [RandomGamma(1.0)(ramp, ramp[:, :, 0], np.random.default_rng(s))[0] for s in range(6)]
    assert all(o.flat[0] == 0 and o.flat[-1] == 255 for o in outs)
    assert len({int(o.flat[128]) for o in outs}) > 3
    assert RandomGamma(0.5, p=0.0)(image, mask, np.random.default_rng(0))[0] is image


def test_color_balance_tints_and_desaturates_only_the_image():
    rng = np.random.default_rng(3)
    image = rng.integers(80, 170, (24, 20, 3), dtype=np.uint8)  # no clipping at 0 or 255
    mask = rng.integers(0, 4, (24, 20), dtype=np.uint8)
    out_img, out_mask = ColorBalance(0.3, 0.0)(image, mask, np.random.default_rng(0))
    assert out_mask is mask and out_img.dtype == np.uint8 and out_img.shape == image.shape
    # one gain per channel: every channel's ratio to the input is one constant (up to rounding)
    ratios = out_img.astype(float) / image
    assert np.all(ratios.std(axis=(0, 1)) < 0.02) and np.ptp(ratios.mean(axis=(0, 1))) > 0.01
    assert np.all(np.abs(ratios.mean(axis=(0, 1)) - 1) <= 0.3 + 0.01)
    # saturation alone keeps each pixel's grey and scales the colour around it by one factor
    sat, _ = ColorBalance(0.0, 0.5)(image, mask, np.random.default_rng(1))
    grey_in, grey_out = image.mean(axis=2), sat.astype(float).mean(axis=2)
    assert np.abs(grey_out - grey_in).max() <= 1.0
    spread_in, spread_out = image - grey_in[..., None], sat - grey_out[..., None]
    factor = (spread_out * spread_in).sum() / (spread_in**2).sum()
    assert abs(factor - 1) > 0.01 and np.abs(spread_out - factor * spread_in).max() <= 1.5
    # a grey image has no colour to change by saturation; a 1-channel image passes unchanged
    grey = np.repeat(image[:, :, :1], 3, axis=2)
    np.testing.assert_array_equal(ColorBalance(0.0, 0.5)(grey, mask, rng)[0], grey)
    for one in (image[:, :, 0], image[:, :, :1]):
        assert ColorBalance(0.3, 0.5)(one, mask, rng)[0] is one
    np.testing.assert_array_equal(ColorBalance(0.0, 0.0)(image, mask, rng)[0], image)
    with pytest.raises(ValueError, match="channel_gain and saturation"):
        ColorBalance(1.0, 0.0)


def _old_pipeline(crop_size, augment):
    """`transforms_for_training(crop_size, augment=...)` as it was built before TrainConfig
    fields chose the steps."""
    if not crop_size and not augment:
        return Compose([])
    steps = [RandomCrop(crop_size)] if crop_size else []
    if augment:
        steps += [RandomFlip(horizontal=0.5, vertical=0.5), RandomRotate90(p=0.5), ColorJitter()]
    return Compose(steps)


@pytest.mark.parametrize("crop_size", [0, 32, 120])
@pytest.mark.parametrize("augment", [True, False])
def test_default_config_builds_the_pipeline_of_before(crop_size, augment):
    new = transforms_for_training(TrainConfig(crop_size=crop_size, augment=augment))
    old = _old_pipeline(crop_size, augment)
    assert repr(new) == repr(old)
    for seed in range(8):
        image, mask = _blocks(np.random.default_rng(seed), 90, 70, block=5, channels=3)
        a = new(image, mask, np.random.default_rng(seed))
        b = old(image, mask, np.random.default_rng(seed))
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_config_fields_turn_steps_on_and_off():
    cfg = TrainConfig(
        crop_size=64,
        hflip=0.5,
        vflip=0.0,
        rotate90=0.0,
        scale_min=0.8,
        scale_max=1.2,
        rotate_degrees=10.0,
        elastic=0.5,
        brightness=0.0,
        contrast=0.3,
        channel_gain=0.1,
        gamma=0.2,
        noise_std=3.0,
    )
    steps = transforms_for_training(cfg).transforms
    kinds = [type(t).__name__ for t in steps]
    assert kinds == ["RandomCrop", "RandomWarp", "RandomFlip", "ColorJitter", "ColorBalance",
                     "RandomGamma", "GaussianNoise"]  # fmt: skip
    crop, warp = steps[0], steps[1]
    assert crop.context == warp.context(64) > 3 * 10 and warp.size == (64, 64)
    image, mask = _blocks(np.random.default_rng(0), 200, 150, channels=1)
    for seed in range(10):
        out_img, out_mask = transforms_for_training(cfg)(image, mask, np.random.default_rng(seed))
        assert out_img.shape == (64, 64, 1) and out_mask.shape == (64, 64)
    off = transforms_for_training(TrainConfig(crop_size=0, hflip=0, vflip=0, rotate90=0,
                                              brightness=0, contrast=0))  # fmt: skip
    assert off.transforms == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(hflip=1.5), "hflip is a probability"),
        (dict(elastic=-0.1), "elastic is a probability"),
        (dict(scale_min=1.2, scale_max=1.1), "scale_min and scale_max"),
        (dict(scale_min=0.0), "scale_min and scale_max"),
        (dict(rotate_degrees=200.0), "rotate_degrees"),
        (dict(elastic_grid=1), "elastic_grid"),
        (dict(contrast=1.0), "brightness and contrast"),
        (dict(noise_std=-1.0), "noise_std"),
        (dict(saturation=1.0), "channel_gain and saturation"),
        (dict(channel_gain=-0.1), "channel_gain and saturation"),
        (dict(border_sigma=0.0), "border_sigma"),
        (dict(border_weight=-1.0), "border_weight"),
    ],
)
def test_train_config_validates_augmentation_fields(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_warp_refuses_an_output_larger_than_its_input():
    image, mask = _blocks(np.random.default_rng(0), 40, 40)
    with pytest.raises(ValueError, match="RandomCrop\\(size, context="):
        RandomWarp((48, 48), elastic_p=1.0)(image, mask, np.random.default_rng(0))
    with pytest.raises(ValueError, match="scale must be a range"):
        RandomWarp(scale=(1.2, 1.0))
