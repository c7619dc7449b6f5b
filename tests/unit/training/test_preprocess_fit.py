"""The run's preprocessing fitted on the driver (jobs.training.preprocess_fit): the scheme from
the data or the flag, the statistics of the seeded training sample, the channel names."""

from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pytest

from jobs.training.config import TrainJobConfig, parse_args
from jobs.training.data_checks import DataValidationError, gather_training_data
from jobs.training.preprocess_fit import fit_training_preprocessing
from unet_core.data import decode_image
from unet_core.preprocessing import channel_statistics, fit_preprocessing, read_array
from unet_core.synthetic import make_synthetic_dataset
from unet_core.synthetic_kinds import make_image_kind_dataset


def _fitted(root, **flags):
    cfg = TrainJobConfig(data=str(root), **flags)
    data, _ = gather_training_data(str(root), val_fraction=0.2, seed=0)
    return data, fit_training_preprocessing(cfg, data)


def test_four_band_tiffs_get_clip_zscore_from_the_training_sample(tmp_path):
    make_image_kind_dataset(tmp_path, kind="uint16_tiff4", num_images=10, size=32)
    data, fitted = _fitted(tmp_path)
    assert data.in_channels == 4  # the pair checks count the TIFF's bands
    pre = fitted.preprocess
    assert pre.scheme == "clip_zscore" and pre.names == ("red", "green", "blue", "nir")
    assert fitted.decode.pixel_values == "native" and not pre.is_rgb
    sample = random.Random(0).sample(sorted(data.train, key=lambda p: p.key), len(data.train))
    arrays = [read_array((tmp_path / p.image).read_bytes(), source=p.image) for p in sample]
    want = fit_preprocessing(channel_statistics(arrays), channel_names=pre.names)
    assert pre == want


def test_eight_bit_rgb_gets_scale_zscore_of_the_decoded_pixels(tmp_path):
    make_synthetic_dataset(tmp_path, num_images=10, size=32)
    data, fitted = _fitted(tmp_path)
    pre = fitted.preprocess
    assert pre.scheme == "scale_zscore" and pre.is_rgb and fitted.decode.pixel_values == "uint8"
    sample = random.Random(0).sample(sorted(data.train, key=lambda p: p.key), len(data.train))
    arrays = [decode_image((tmp_path / p.image).read_bytes(), channels=3) for p in sample]
    np.testing.assert_allclose(pre.mean, np.asarray(channel_statistics(arrays).mean) / 255)
    _, legacy = _fitted(tmp_path, preprocessing="legacy_uint8")
    assert legacy.preprocess.scheme == "legacy_uint8" and legacy.preprocess.mean == (0.5,) * 3


def test_channel_names_from_the_flag_and_their_count(tmp_path):
    make_image_kind_dataset(tmp_path, kind="png12", num_images=6, size=32)
    _, fitted = _fitted(tmp_path, channel_names="dapi")
    assert fitted.preprocess.names == ("dapi",)
    with pytest.raises(DataValidationError, match="2 channel names .* for 1-channel images"):
        _fitted(tmp_path, channel_names="a,b")
    doc = json.loads((tmp_path / "classes.json").read_text())
    (tmp_path / "classes.json").write_text(json.dumps({**doc, "channels": "gray"}))
    with pytest.raises(DataValidationError, match='"channels" must be a list'):
        _fitted(tmp_path)


def test_the_flags_parse_and_a_bad_scheme_is_refused():
    cfg = parse_args(["--data", "/d", "--preprocessing", "clip_zscore", "--channel-names", "a,b"])
    assert (cfg.preprocessing, cfg.channel_names) == ("clip_zscore", "a,b")
    assert dataclasses.replace(cfg, preprocessing="auto").preprocessing == "auto"
    with pytest.raises(SystemExit):
        parse_args(["--data", "/d", "--preprocessing", "minmax"])
