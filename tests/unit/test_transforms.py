import numpy as np
import pytest

from unet_core.config import IGNORE_INDEX, PreprocessConfig
from unet_core.transforms import (
    ColorJitter,
    Compose,
    RandomCrop,
    RandomFlip,
    RandomRotate90,
    Resize,
    to_tensors,
    train_transforms,
)

COLORS = np.array([[10, 20, 30], [200, 40, 60], [90, 250, 120], [0, 0, 255]], dtype=np.uint8)


def _pair(rng, h=37, w=53):
    mask = rng.integers(0, 4, (h, w), dtype=np.uint8)
    return COLORS[mask], mask  # the image is a colour lookup of the mask


def _aligned(image, mask):
    valid = mask != IGNORE_INDEX
    return np.array_equal(image[valid], COLORS[mask[valid]])


@pytest.mark.parametrize("seed", range(40))
def test_geometric_transforms_keep_alignment(seed):
    rng = np.random.default_rng(seed)
    image, mask = _pair(rng, int(rng.integers(5, 60)), int(rng.integers(5, 60)))
    t = Compose([RandomCrop(32), RandomFlip(0.5, 0.5), RandomRotate90(0.7)])
    out_img, out_mask = t(image, mask, rng)
    assert out_img.shape == (32, 32, 3) and out_mask.shape == (32, 32)
    assert _aligned(out_img, out_mask)
    padded = out_mask == IGNORE_INDEX
    assert (out_img[padded] == 0).all()


def test_resize_uses_nearest_for_masks():
    rng = np.random.default_rng(0)
    image, mask = _pair(rng, 40, 40)
    out_img, out_mask = Resize((17, 23), "area")(image, mask, rng)
    assert out_img.shape == (17, 23, 3) and out_mask.shape == (17, 23)
    assert set(np.unique(out_mask)) <= set(np.unique(mask))
    _, up_mask = Resize(80)(image, mask, rng)
    assert set(np.unique(up_mask)) <= {0, 1, 2, 3}


def test_same_seed_same_output():
    image, mask = _pair(np.random.default_rng(1), 64, 64)
    t = train_transforms(32)
    a = t(image, mask, np.random.default_rng(7))
    b = t(image, mask, np.random.default_rng(7))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_jitter_changes_only_the_image():
    image, mask = _pair(np.random.default_rng(2))
    out_img, out_mask = ColorJitter(0.5, 0.5)(image, mask, np.random.default_rng(3))
    assert out_mask is mask and out_img.shape == image.shape and not np.array_equal(out_img, image)


def test_to_tensors():
    image, mask = _pair(np.random.default_rng(4), 8, 9)
    x, y = to_tensors(image, mask, PreprocessConfig())
    assert tuple(x.shape) == (3, 8, 9) and str(x.dtype) == "torch.float32"
    assert tuple(y.shape) == (8, 9) and str(y.dtype) == "torch.int64"
