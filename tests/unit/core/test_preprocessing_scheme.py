"""Preprocessing schemes (unet_core.config.Preprocessing): legacy checkpoints unchanged, one
formula in NumPy and torch, schemes chosen and fitted from the data, 12-bit contrast kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unet_core.config import PreprocessConfig, Preprocessing
from unet_core.data import decode_image
from unet_core.image_decode import model_input
from unet_core.image_files import DecodeOptions, ImageDecodeError
from unet_core.preprocessing import (
    channel_statistics,
    choose_scheme,
    fit_channels,
    fit_preprocessing,
    read_array,
)
from unet_core.synthetic_kinds import make_image_kind, make_image_kind_dataset
from unet_core.transforms import normalize_batch

RNG = np.random.default_rng(0)
NATIVE = DecodeOptions(pixel_values="native")


def test_a_preprocessing_saved_before_schemes_is_legacy_and_normalises_as_before():
    old = {"channels": 3, "mean": [0.45, 0.5, 0.55], "std": [0.2, 0.25, 0.3]}  # a 2025 file
    pre = PreprocessConfig.from_dict(old)
    assert pre.scheme == "legacy_uint8" and pre.pixel_values == "uint8" and pre.is_rgb
    image = RNG.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    # the arithmetic of every release before schemes, spelled out
    shift = np.asarray(old["mean"], np.float32) * 255.0
    scale = 1.0 / (np.asarray(old["std"], np.float32) * 255.0)
    want = ((image.astype(np.float32) - shift) * scale).transpose(2, 0, 1)
    np.testing.assert_array_equal(pre.normalize(image), want)
    assert Preprocessing.from_dict(pre.to_dict()) == pre


def _stats_pre(arrays, scheme=None):
    return fit_preprocessing(channel_statistics(arrays), scheme=scheme)


@pytest.mark.parametrize(
    "image",
    [
        RNG.integers(0, 256, size=(2, 9, 11, 3), dtype=np.uint8),
        RNG.integers(0, 65536, size=(2, 9, 11, 4), dtype=np.uint16),
        np.where(RNG.random((2, 9, 11, 1)) < 0.05, np.nan, RNG.normal(5, 40, (2, 9, 11, 1))).astype(
            np.float32
        ),
    ],
    ids=["uint8", "uint16", "float-with-nan"],
)
@pytest.mark.parametrize("scheme", ["legacy_uint8", "scale_zscore", "clip_zscore"])
def test_numpy_and_torch_normalise_bit_for_bit(image, scheme):
    if scheme == "legacy_uint8" and image.shape[3] not in (1, 3):
        image = image[..., :3]  # a legacy model takes 1 or 3 channels: its first three
    pre = _stats_pre(list(image), scheme)
    batch = normalize_batch(torch.from_numpy(image), pre).numpy()
    for i in range(len(image)):
        np.testing.assert_array_equal(batch[i], pre.normalize(image[i]))
    assert scheme != "clip_zscore" or np.isfinite(batch).all()  # non-finite pixels: 0


def test_clip_zscore_clips_to_the_percentiles_then_z_scores():
    pre = Preprocessing(
        channels=2,
        mean=(100.0, 0.0),
        std=(10.0, 2.0),
        scheme="clip_zscore",
        clip_low=(90.0, -1.0),
        clip_high=(130.0, 1.0),
    )
    image = np.asarray([[[0.0, -5.0], [100.0, 0.5], [1000.0, 9.0]]], np.float32)  # (1, 3, 2)
    out = pre.normalize(image)  # (2, 1, 3)
    np.testing.assert_allclose(out[0, 0], [-1.0, 0.0, 3.0])
    np.testing.assert_allclose(out[1, 0], [-0.5, 0.25, 0.5])
    assert pre.pixel_values == "native" and not pre.is_rgb


def test_scheme_is_chosen_from_the_data_and_fitted_to_it():
    eight = [RNG.integers(0, 256, size=(8, 8, 3), dtype=np.uint8) for _ in range(3)]
    stats8 = channel_statistics(eight)
    assert choose_scheme(stats8) == "scale_zscore"
    pre8 = fit_preprocessing(stats8)
    np.testing.assert_allclose(pre8.mean, np.asarray(stats8.mean) / 255.0)
    np.testing.assert_allclose(pre8.std, np.asarray(stats8.std) / 255.0)
    assert pre8.pixel_values == "uint8"  # 8-bit RGB decodes as before
    wide = [RNG.integers(0, 4096, size=(8, 8, 4), dtype=np.uint16) for _ in range(3)]
    stats16 = channel_statistics(wide)
    pre16 = fit_preprocessing(stats16, channel_names=("red", "green", "blue", "nir"))
    assert pre16.scheme == "clip_zscore" and pre16.names[-1] == "nir"
    assert (pre16.mean, pre16.std) == (stats16.mean, stats16.std)
    assert (pre16.clip_low, pre16.clip_high) == (stats16.p_low, stats16.p_high)
    assert Preprocessing.from_dict(pre16.to_dict()) == pre16
    flat = fit_preprocessing(channel_statistics([np.full((4, 4), 7, np.uint16)]))
    assert flat.std == (1.0,)  # no spread: finite, all pixels normalise to 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scheme": "minmax"}, "scheme must be one of"),
        ({"channels": 4}, "legacy_uint8: 1 or 3"),
        ({"channels": 2, "scheme": "clip_zscore", "mean": (0,), "std": (1,)}, "clip_low needs 2"),
        ({"channel_names": ("a", "b")}, "channel_names needs 3"),
    ],
)
def test_bad_preprocessing_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Preprocessing(**kwargs)


def test_twelve_bit_contrast_survives_where_eight_bit_decoding_flattens_it(tmp_path):
    """The issue's example: objects ~600 of 4095 grey levels above the background."""
    make_image_kind_dataset(tmp_path, kind="png12", num_images=16, size=64)
    files = sorted((tmp_path / "images").iterdir())
    masks = [read_array((tmp_path / "masks" / f.name).read_bytes(), source=f.name) for f in files]
    arrays = [read_array(f.read_bytes(), source=f.name) for f in files]
    stats = channel_statistics(arrays)
    assert stats.bit_depth == 12 and stats.dtype == "uint16"
    new = fit_preprocessing(stats)
    legacy = Preprocessing.for_channels(1)

    def contrast(pre, images):  # object mean - background mean, in normalised units
        x = np.concatenate([pre.normalize(i)[0].ravel() for i in images])
        obj = np.concatenate([m[:, :, 0].ravel() > 0 for m in masks])
        return x[obj].mean() - x[~obj].mean(), len(np.unique(x))

    old_contrast, old_levels = contrast(
        legacy, [decode_image(f.read_bytes(), channels=1) for f in files]
    )
    new_contrast, new_levels = contrast(new, arrays)
    assert new_contrast > 2.0  # about 600 / std of the set
    assert old_contrast < 0.4 and old_levels < 20  # (x / 257 / 255 - 0.5) / 0.25
    assert new_levels > 500


def test_native_decode_keeps_values_and_fits_channels(tmp_path):
    make_image_kind_dataset(tmp_path, kind="uint16_tiff4", num_images=1, size=32)
    data = next((tmp_path / "images").iterdir()).read_bytes()
    image = decode_image(data, channels=4, source="t.tif", options=NATIVE)
    assert image.dtype == np.uint16 and image.shape == (32, 32, 4)
    np.testing.assert_array_equal(image, read_array(data, source="t.tif"))
    with pytest.raises(ImageDecodeError, match=r"t\.tif: image has 4 channels, the model takes 3"):
        decode_image(data, channels=3, source="t.tif", options=NATIVE)
    gray = RNG.integers(0, 4096, size=(6, 6, 1), dtype=np.uint16)
    assert fit_channels(gray, 3, source="g").shape == (6, 6, 3)
    rgb = RNG.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    from PIL import Image

    pil_luma = np.asarray(Image.fromarray(rgb).convert("L"))
    np.testing.assert_array_equal(fit_channels(rgb, 1, source="c")[:, :, 0], pil_luma)


def test_model_input_keeps_own_values_for_native_models_only():
    image, _ = make_image_kind(np.random.default_rng(1), "float32_tiff", (16, 16))
    pre = fit_preprocessing(channel_statistics([image]))
    np.testing.assert_array_equal(model_input(image[:, :, 0], pre), image)
    with pytest.raises(ValueError, match="uint8"):
        model_input(image, Preprocessing.for_channels(1))


def test_predict_on_sixteen_bit_arrays_is_the_normalised_forward_pass():
    from unet_core.config import ModelConfig
    from unet_core.model import UNet
    from unet_core.predict import predict

    torch.manual_seed(0)
    model = UNet.from_config(ModelConfig(in_channels=4, num_classes=2, base_width=4, depth=2))
    image = RNG.integers(0, 65536, size=(16, 24, 4), dtype=np.uint16)
    pre = fit_preprocessing(channel_statistics([image]))
    with torch.inference_mode():
        logits = model.eval()(torch.from_numpy(pre.normalize(image))[None])[0]
    got = predict(model, image, preprocess=pre, tile_size=None, amp=False).mask
    np.testing.assert_array_equal(got, logits.argmax(dim=0).numpy())
