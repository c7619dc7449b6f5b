import numpy as np
import pytest
import torch
from PIL import Image

from unet_core.config import PreprocessConfig
from unet_core.model import UNet
from unet_core.predict import predict, predict_batch, predict_tensor, prepare_for_inference

PRE = PreprocessConfig()


def _smooth_model(num_classes=3):
    """An untrained model gives near-ties everywhere; give it a decisive, position-free rule:
    the class follows the red channel, so tiles must agree wherever the receptive field fits."""
    torch.manual_seed(0)
    model = UNet(3, num_classes, base_width=4, depth=2, norm="none")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.1)
        model.head.bias.copy_(torch.tensor([0.0, 0.5, 1.0][:num_classes]))
    return prepare_for_inference(model, "cpu")


def _image(h, w, seed=0):
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), dtype=np.uint8)
    for _ in range(12):
        y, x = rng.integers(0, h), rng.integers(0, w)
        img[max(0, y - 30) : y + 30, max(0, x - 30) : x + 30] = rng.integers(0, 255, 3)
    return img


def test_prediction_has_input_size_and_valid_classes():
    model = _smooth_model()
    pred = predict(model, _image(61, 87), preprocess=PRE)
    assert pred.mask.shape == (61, 87) and pred.mask.dtype == np.uint8
    assert pred.confidence.shape == (61, 87) and pred.confidence.dtype == np.float32
    assert pred.mask.max() < 3
    assert (pred.confidence > 0).all() and (pred.confidence <= 1.0 + 1e-6).all()


def test_grayscale_and_pil_inputs():
    model = UNet(1, 2, base_width=4, depth=2).eval()
    pre = PreprocessConfig.for_channels(1)
    gray = np.full((20, 30), 128, dtype=np.uint8)
    assert predict(model, gray, preprocess=pre).mask.shape == (20, 30)
    rgb = Image.new("RGB", (30, 20), (10, 200, 30))
    assert predict(model, rgb, preprocess=pre).mask.shape == (20, 30)


def test_tiled_equals_untiled_when_image_fits_one_tile():
    model = _smooth_model()
    img = _image(120, 100)
    a = predict(model, img, preprocess=PRE, tile_size=None)
    b = predict(model, img, preprocess=PRE, tile_size=128, tile_overlap=32)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.confidence, b.confidence)


def test_tiled_close_to_untiled_across_seams():
    model = _smooth_model()
    img = _image(300, 420, seed=3)
    full = predict(model, img, preprocess=PRE, tile_size=None, amp=False)
    tiled = predict(model, img, preprocess=PRE, tile_size=128, tile_overlap=48, amp=False)
    assert (full.mask == tiled.mask).mean() > 0.98
    assert np.abs(full.confidence - tiled.confidence).mean() < 0.02


def test_tta_and_batch_agree_with_single():
    model = _smooth_model()
    imgs = [_image(40, 56, seed=s) for s in range(3)]
    singles = [predict(model, im, preprocess=PRE, tta=True) for im in imgs]
    batch = predict_batch(model, imgs, preprocess=PRE, tta=True)
    for s, b in zip(singles, batch, strict=True):
        assert s.mask.shape == (40, 56)
        assert (s.mask == b.mask).mean() > 0.999
    with pytest.raises(ValueError, match="equal-size"):
        predict_batch(model, [imgs[0], _image(10, 10)], preprocess=PRE)


def test_predict_tensor_returns_uint8_on_device():
    model = _smooth_model()
    classes, conf = predict_tensor(model, torch.randn(2, 3, 16, 24))
    assert classes.dtype == torch.uint8 and classes.shape == (2, 16, 24)
    assert conf.shape == (2, 16, 24)


def test_large_image_tiled_runs_with_bounded_memory():
    model = prepare_for_inference(UNet(3, 3, base_width=4, depth=2), "cpu")
    img = np.zeros((4000, 4000, 3), dtype=np.uint8)
    pred = predict(model, img, preprocess=PRE, tile_size=1024, tile_overlap=64)
    assert pred.mask.shape == (4000, 4000)
