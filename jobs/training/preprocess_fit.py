"""The run's preprocessing, fitted on the driver from a seeded sample of the training images:
the scheme (--preprocessing; auto chooses from the data), the per-channel statistics and the
channel names (--channel-names, else the "channels" list of classes.json). The result travels
with the training data (`TrainingData.preprocess`, and the decode options' ``pixel_values``,
so every decode of the run gives the pixels the model takes) into the loop config, the
checkpoints and the logged model."""

from __future__ import annotations

import dataclasses
import json
import logging
import random

from jobs.common import fs
from jobs.common.pairs import read_file
from jobs.training.config import TrainJobConfig
from jobs.training.data_checks import DataValidationError, TrainingData
from unet_core.classes import CLASS_MAP_FILENAME
from unet_core.config import Preprocessing
from unet_core.data import decode_image
from unet_core.preprocessing import channel_statistics, choose_scheme, fit_preprocessing

log = logging.getLogger(__name__)

STATS_IMAGES = 200
"""Training images (a seeded sample) the statistics are computed from, read by the driver."""
STATS_PIXELS = 65_536
"""Pixels drawn from each sampled image (`unet_core.preprocessing.channel_statistics`)."""


def channel_names(cfg: TrainJobConfig, data: TrainingData) -> tuple[str, ...]:
    """--channel-names, else classes.json's "channels" list at the data root, else ()."""
    if cfg.channel_names:
        return tuple(n.strip() for n in cfg.channel_names.split(",") if n.strip())
    uri = cfg.class_map or fs.join(data.root, CLASS_MAP_FILENAME)
    try:
        doc = json.loads(fs.read_bytes(uri, endpoint_url=cfg.s3_endpoint_url))
    except (OSError, ValueError):  # read_class_map has already said what is wrong with it
        return ()
    names = doc.get("channels") if isinstance(doc, dict) else None
    if names is None:
        return ()
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DataValidationError(
            f'{uri}: "channels" must be a list of channel names, e.g. ["red", "green", '
            f'"blue", "nir"]; got {names!r}'
        )
    return tuple(names)


def _sample_arrays(cfg: TrainJobConfig, data: TrainingData, channels: int, options) -> list:
    pairs = sorted(data.train, key=lambda p: p.key)
    picked = random.Random(cfg.train.seed).sample(pairs, min(STATS_IMAGES, len(pairs)))
    arrays = []
    for pair in picked:
        uri = fs.join(data.root, pair.image)
        try:
            data_bytes = read_file(uri, cfg.s3_endpoint_url)
            arrays.append(decode_image(data_bytes, channels=channels, source=uri, options=options))
        except (OSError, ValueError) as exc:  # a bad pair: training leaves it out too
            log.warning("preprocessing statistics leave out %s: %s", uri, exc)
    if not arrays:
        raise DataValidationError(
            f"{data.root}: none of {len(picked)} sampled training images decodes; the "
            "preprocessing statistics need some (see the warnings above)"
        )
    return arrays


def fit_training_preprocessing(cfg: TrainJobConfig, data: TrainingData) -> TrainingData:
    """``data`` with its `Preprocessing` (and the decode options that go with it)."""
    names = channel_names(cfg, data)
    channels = data.in_channels
    if names and len(names) != channels:
        raise DataValidationError(
            f"{len(names)} channel names ({', '.join(names)}) for {channels}-channel images; "
            'give one name per channel (--channel-names or classes.json\'s "channels")'
        )
    scheme = cfg.preprocessing
    if scheme == "legacy_uint8":
        preprocess = Preprocessing.for_channels(channels)
    else:
        native = dataclasses.replace(data.decode, pixel_values="native")
        stats = channel_statistics(
            _sample_arrays(cfg, data, channels, native), max_pixels_per_image=STATS_PIXELS
        )
        scheme = choose_scheme(stats) if scheme == "auto" else scheme
        probe = Preprocessing(
            channels=channels,
            scheme=scheme,
            mean=(0.0,),
            std=(1.0,),
            clip_low=(0.0,) * channels,
            clip_high=(0.0,) * channels,
        )
        if probe.pixel_values == "uint8":  # the statistics of the pixels the model will see
            eight_bit = dataclasses.replace(data.decode, pixel_values="uint8")
            stats = channel_statistics(
                _sample_arrays(cfg, data, channels, eight_bit), max_pixels_per_image=STATS_PIXELS
            )
        preprocess = fit_preprocessing(stats, scheme=scheme, channel_names=names)
        log.info(
            "preprocessing %s from %d training images (%s, %s bits): %s",
            scheme,
            stats.images,
            stats.dtype,
            stats.bit_depth,
            preprocess.to_dict(),
        )
    if names and not preprocess.channel_names:
        preprocess = dataclasses.replace(preprocess, channel_names=names)
    decode = dataclasses.replace(data.decode, pixel_values=preprocess.pixel_values)
    return dataclasses.replace(data, preprocess=preprocess, decode=decode)
