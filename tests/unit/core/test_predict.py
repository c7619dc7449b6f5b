import contextlib

import numpy as np
import pytest
import torch
from PIL import Image

from unet_core.config import PreprocessConfig
from unet_core.model import UNet
from unet_core.predict import (
    _predict_tiled,
    autocast_context,
    predict,
    predict_batch,
    predict_tensor,
    prepare_for_inference,
    resolve_device,
)

PRE = PreprocessConfig()


def _smooth_model(num_classes=3, norm="none"):
    """An untrained model gives near-ties everywhere; give it a decisive, local rule (small
    weights, a head bias per class) so tiles must agree wherever the receptive field fits."""
    torch.manual_seed(0)
    model = UNet(3, num_classes, base_width=4, depth=2, norm=norm)
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


def _assert_same(a, b):
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.confidence, b.confidence)


def test_prediction_has_input_size_and_valid_classes():
    pred = predict(_smooth_model(), _image(61, 87), preprocess=PRE)
    assert pred.mask.shape == (61, 87) and pred.mask.dtype == np.uint8
    assert pred.confidence.shape == (61, 87) and pred.confidence.dtype == np.float32
    assert pred.mask.max() < 3
    assert (pred.confidence >= 1 / 3 - 1e-6).all() and (pred.confidence <= 1.0 + 1e-6).all()


def test_grayscale_rgba_and_pil_inputs_are_converted():
    model = UNet(1, 2, base_width=4, depth=2)
    gray_pre = PreprocessConfig.for_channels(1)
    gray = np.full((20, 30), 128, dtype=np.uint8)
    assert predict(model, gray, preprocess=gray_pre).mask.shape == (20, 30)
    rgb = Image.new("RGB", (30, 20), (10, 200, 30))
    assert predict(model, rgb, preprocess=gray_pre).mask.shape == (20, 30)
    # RGB -> luminance for a 1-channel model gives what the same grayscale image gives
    lum = np.asarray(rgb.convert("L"))
    _assert_same(
        predict(model, np.asarray(rgb), preprocess=gray_pre),
        predict(model, lum, preprocess=gray_pre),
    )
    rgb_model = _smooth_model()
    rgba = np.dstack([_image(20, 30), np.full((20, 30), 7, np.uint8)])
    _assert_same(
        predict(rgb_model, rgba, preprocess=PRE), predict(rgb_model, rgba[..., :3], preprocess=PRE)
    )
    # grayscale -> replicated RGB for a 3-channel model
    _assert_same(
        predict(rgb_model, Image.fromarray(gray), preprocess=PRE),
        predict(rgb_model, np.repeat(gray[..., None], 3, axis=2), preprocess=PRE),
    )


def test_bad_inputs_are_refused_with_the_fix():
    model = _smooth_model()
    with pytest.raises(ValueError, match="uint8"):
        predict(model, np.zeros((8, 8, 3), np.uint16), preprocess=PRE)
    with pytest.raises(ValueError, match="shape"):
        predict(model, np.zeros((8, 8, 5), np.uint8), preprocess=PRE)
    with pytest.raises(ValueError, match="tile_overlap"):
        predict(model, _image(40, 40), preprocess=PRE, tile_size=16, tile_overlap=16)
    with pytest.raises(ValueError, match="equal-size"):
        predict_batch(model, [_image(10, 12), _image(10, 10)], preprocess=PRE)


def test_tiled_equals_untiled_when_image_fits_one_tile():
    model = _smooth_model()
    img = _image(120, 100)
    untiled = predict(model, img, preprocess=PRE, tile_size=None)
    _assert_same(untiled, predict(model, img, preprocess=PRE, tile_size=120, tile_overlap=32))
    # the sliding-window code itself, forced onto a single tile, is bit-identical too
    forced = _predict_tiled(
        model, img, preprocess=PRE, tile_size=128, overlap=32, tta=False, amp=None, tile_batch=4
    )
    _assert_same(untiled, forced)


@pytest.mark.parametrize("tta", [False, True])
def test_tiled_close_to_untiled_across_seams(tta):
    model = _smooth_model()
    img = _image(300, 420, seed=3)
    full = predict(model, img, preprocess=PRE, tile_size=None, tta=tta, amp=False)
    tiled = predict(model, img, preprocess=PRE, tile_size=128, tile_overlap=48, tta=tta, amp=False)
    assert (full.mask == tiled.mask).mean() > 0.98
    assert np.abs(full.confidence - tiled.confidence).mean() < 0.02
    assert tiled.confidence.min() > 0 and tiled.confidence.max() <= 1.0 + 1e-6


def test_tiling_odd_tile_sizes_and_one_long_side():
    model = _smooth_model()
    img = _image(70, 333, seed=5)  # only the width exceeds the tile; tile not a multiple of 4
    full = predict(model, img, preprocess=PRE, tile_size=None, amp=False)
    tiled = predict(model, img, preprocess=PRE, tile_size=90, tile_overlap=0.25, amp=False)
    assert tiled.mask.shape == (70, 333)
    assert (full.mask == tiled.mask).mean() > 0.98
    pixels = predict(model, img, preprocess=PRE, tile_size=90, tile_overlap=22, amp=False)
    _assert_same(tiled, pixels)  # 0.25 of 90 rounds to 22 pixels


def test_prediction_is_deterministic():
    model = _smooth_model()
    img = _image(150, 170, seed=2)
    a = predict(model, img, preprocess=PRE, tile_size=64, tile_overlap=16, tta=True)
    b = predict(model, img, preprocess=PRE, tile_size=64, tile_overlap=16, tta=True)
    _assert_same(a, b)


@pytest.mark.parametrize("size", [(40, 56), (90, 70)])
def test_predict_batch_of_one_equals_predict_exactly(size):
    model = _smooth_model(norm="batch")
    img = _image(*size, seed=1)
    kwargs = {"preprocess": PRE, "tile_size": 64, "tile_overlap": 16}  # (90, 70) is tiled
    for tta in (False, True):
        _assert_same(
            predict(model, img, tta=tta, **kwargs),
            predict_batch(model, [img], tta=tta, **kwargs)[0],
        )


def test_tta_and_batch_agree_with_single():
    model = _smooth_model()
    imgs = [_image(40, 56, seed=s) for s in range(3)]
    singles = [predict(model, im, preprocess=PRE, tta=True) for im in imgs]
    batch = predict_batch(model, imgs, preprocess=PRE, tta=True)
    assert len(batch) == 3 and predict_batch(model, [], preprocess=PRE) == []
    for s, b in zip(singles, batch, strict=True):
        assert s.mask.shape == b.mask.shape == (40, 56)
        assert (s.mask == b.mask).mean() > 0.999


def test_train_mode_model_predicts_in_eval_mode_and_is_restored():
    model = _smooth_model(norm="batch")
    img = _image(32, 48)
    tiled = {"tile_size": 16, "tile_overlap": 4}
    expected = predict(model, img, preprocess=PRE)
    expected_tiled = predict(model, img, preprocess=PRE, **tiled)
    model.train()
    _assert_same(expected, predict(model, img, preprocess=PRE, device="cpu"))
    _assert_same(expected_tiled, predict(model, img, preprocess=PRE, **tiled))
    assert model.training
    assert all(m.training for m in model.modules())


def test_predict_tensor_returns_uint8_classes_and_probabilities():
    model = _smooth_model()
    classes, conf = predict_tensor(model, torch.randn(2, 3, 16, 24), tta=True)
    assert classes.dtype == torch.uint8 and classes.shape == (2, 16, 24)
    assert conf.dtype == torch.float32 and conf.shape == (2, 16, 24)
    assert classes.max() < 3 and (conf <= 1.0 + 1e-6).all()


def test_autocast_and_device_helpers():
    assert isinstance(autocast_context("cpu", enabled=False), contextlib.nullcontext)
    forced = autocast_context("cpu", enabled=True)
    assert isinstance(forced, torch.autocast) and forced.fast_dtype == torch.bfloat16
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device() == torch.device("cpu")
    model = prepare_for_inference(UNet(3, 2, base_width=4, depth=1).train(), "cpu")
    assert not model.training
    assert model.stem[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_large_image_tiled_runs_with_bounded_memory():
    """4000 x 4000: 25 tiles of 1024; the accumulator is one (K, 1024, 4000) band (module doc)."""
    model = prepare_for_inference(UNet(3, 3, base_width=4, depth=2), "cpu")
    img = np.zeros((4000, 4000, 3), dtype=np.uint8)
    img[1000:3000, 500:3500] = 200
    pred = predict(model, img, preprocess=PRE, tile_size=1024, tile_overlap=64)
    assert pred.mask.shape == (4000, 4000) and pred.confidence.shape == (4000, 4000)
    assert pred.mask.max() < 3
