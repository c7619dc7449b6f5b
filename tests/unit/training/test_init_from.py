"""Starting weights of a training run, on CPU in seconds: the flags' validation, the parent's
architecture and the refusal of a contradicting flag, the head re-initialisation rule on a tiny
model, the optimizer's encoder groups, the frozen encoder and ImageNet's normalisation."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from jobs.training.config import TrainJobConfig, parse_args
from jobs.training.encoder_init import EncoderFreeze, pretrained_preprocessing
from jobs.training.init_from import (
    InitFromError,
    keeps_head,
    load_parent_weights,
    parent_tags,
    with_parent_architecture,
)
from unet_core.checkpoint import checkpoint_to_bytes
from unet_core.classes import ClassMap
from unet_core.config import ModelConfig, Preprocessing, TrainConfig
from unet_core.engine import make_optimizer, make_scheduler
from unet_core.model import build_model

TINY = ModelConfig(in_channels=3, num_classes=2, base_width=4, depth=2, norm="batch")


def seeded(config: ModelConfig, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(config)


# --- flags ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--encoder-weights", "w.pth"], "needs a pretrainable encoder"),
        (
            ["--encoder", "resnet18", "--encoder-weights", "w.pth", "--init-from", "m.pt"],
            "both set the encoder's weights",
        ),
        (["--encoder-lr-scale", "0"], "--encoder-lr-scale must be in (0, 10]"),
        (["--freeze-encoder-epochs", "-1"], "--freeze-encoder-epochs must be >= 0"),
    ],
)
def test_flags_refused(argv, says, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    assert says in capsys.readouterr().err


def test_encoder_lr_scale_default():
    assert parse_args(["--encoder", "resnet18"]).effective_encoder_lr_scale == 1.0
    pretrained = parse_args(["--encoder", "resnet18", "--encoder-weights", "w.pth"])
    assert pretrained.effective_encoder_lr_scale == 0.1
    given = ["--encoder", "resnet18", "--encoder-weights", "w.pth", "--encoder-lr-scale", "0.5"]
    assert parse_args(given).effective_encoder_lr_scale == 0.5
    assert parse_args(["--init-from", "models:/unet@champion"]).init_from == "models:/unet@champion"


# --- the parent's architecture -----------------------------------------------------------------


def test_parent_architecture_taken_and_contradiction_refused():
    parent = dataclasses.replace(TINY, base_width=6, depth=3, norm="group")
    cfg = parse_args(["--data", "d", "--init-from", "p.pt", "--batch-size", "2"])
    taken = with_parent_architecture(cfg, parent)
    assert (taken.model.base_width, taken.model.depth, taken.model.norm) == (6, 3, "group")
    assert taken.in_channels == 3

    given = parse_args(["--data", "d", "--init-from", "p.pt", "--base-width", "8"])
    with pytest.raises(InitFromError, match=r"--base-width 8 \(the parent's: 6\)"):
        with_parent_architecture(given, parent)
    same = parse_args(["--data", "d", "--init-from", "p.pt", "--base-width", "6"])
    assert with_parent_architecture(same, parent).model.base_width == 6  # agrees: fine
    encoder = parse_args(["--data", "d", "--init-from", "p.pt", "--encoder", "resnet18"])
    with pytest.raises(InitFromError, match=r"--encoder resnet18 \(the parent's: unet\)"):
        with_parent_architecture(encoder, parent)


# --- the head rule -------------------------------------------------------------------------------


def parent_bytes(num_classes: int) -> bytes:
    config = dataclasses.replace(TINY, num_classes=num_classes)
    names = [f"c{i}" for i in range(num_classes)]
    return checkpoint_to_bytes(
        seeded(config, 1),
        model_config=config,
        class_map=ClassMap.from_names(names),
        preprocess=Preprocessing.for_channels(3),
    )


def test_same_class_map_loads_every_weight():
    parent = parent_bytes(2)
    child = seeded(TINY, 2)
    load_parent_weights(child, parent, keep_head=True)
    expected = seeded(TINY, 1).state_dict()
    for key, value in child.state_dict().items():
        assert torch.equal(value, expected[key]), key


@pytest.mark.parametrize("num_classes", [2, 3])
def test_other_class_map_reinitialises_the_head_only(num_classes):
    parent = parent_bytes(2)
    config = dataclasses.replace(TINY, num_classes=num_classes)
    fresh = seeded(config, 2).state_dict()
    child = seeded(config, 2)
    line = load_parent_weights(child, parent, keep_head=False)
    assert "re-initialised head" in line
    expected = seeded(TINY, 1).state_dict()
    for key, value in child.state_dict().items():
        if key.startswith("head."):  # the fresh initialisation, whatever its shape
            assert torch.equal(value, fresh[key]), key
        else:
            assert torch.equal(value, expected[key]), key
    if num_classes != 2:
        with pytest.raises(ValueError, match="do not fit"):
            load_parent_weights(seeded(config, 2), parent, keep_head=True)


def test_keeps_head_by_class_names(caplog):
    two = ClassMap.from_names(["background", "cell"])
    assert keeps_head(two, ClassMap.from_names(["background", "cell"]), uri="p")
    with caplog.at_level(logging.WARNING):
        assert not keeps_head(two, ClassMap.from_names(["background", "nucleus"]), uri="p")
    (line,) = [r.getMessage() for r in caplog.records]
    assert "background, cell" in line and "background, nucleus" in line
    assert "head is re-initialised" in line


def test_parent_tags_of_a_run():
    tags = {"parent_model": "models:/unet@champion", "parent_version": "3", "other": "x"}
    assert parent_tags(tags) == {"parent_model": "models:/unet@champion", "parent_version": "3"}


# --- the encoder's learning rate and freezing ----------------------------------------------------


def test_encoder_param_groups_follow_the_schedule():
    model = seeded(TINY, 0)
    cfg = TrainConfig(lr=1e-2, epochs=4, warmup_epochs=1.0)
    assert len(make_optimizer(model, cfg).param_groups) == 2  # no scale: the groups of old
    optimizer = make_optimizer(model, cfg, encoder_lr_scale=0.1)
    groups = optimizer.param_groups
    assert [g["lr"] for g in groups] == pytest.approx([1e-2, 1e-2, 1e-3, 1e-3])
    encoder = {id(p) for p in model.encoder_parameters()}
    assert all(id(p) not in encoder for g in groups[:2] for p in g["params"])
    assert {id(p) for g in groups[2:] for p in g["params"]} == encoder
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch=5)
    for _ in range(7):
        optimizer.step()
        scheduler.step()
    lrs = [g["lr"] for g in optimizer.param_groups]
    assert lrs[0] != pytest.approx(1e-2) and lrs[2] == pytest.approx(lrs[0] * 0.1)


def test_frozen_encoder_keeps_its_weights_and_batchnorm_statistics():
    model = seeded(TINY, 0)
    freeze = EncoderFreeze(model, epochs=1)
    assert freeze.norms  # the encoder's BatchNorm layers
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = make_optimizer(model, TrainConfig(lr=1e-1), encoder_lr_scale=0.5)
    assert freeze.start_epoch(1) and freeze.frozen
    model.train()
    assert all(not m.training for m in freeze.norms)
    model(torch.randn(2, 3, 16, 16)).mean().backward()
    optimizer.step()
    for name, value in model.state_dict().items():  # the encoder of unet: stem and down path
        assert torch.equal(value, before[name]) == name.startswith(("stem.", "down.")), name
    assert freeze.start_epoch(2) and not freeze.frozen
    model.train()
    assert all(m.training for m in freeze.norms)
    assert all(p.requires_grad for p in model.parameters())


# --- ImageNet's normalisation --------------------------------------------------------------------


def test_pretrained_preprocessing_of_8_bit_images():
    from unet_core.encoders import IMAGENET_MEAN, IMAGENET_STD

    rgb = Preprocessing(channels=3, scheme="scale_zscore", mean=(0.4,) * 3, std=(0.2,) * 3)
    assert pretrained_preprocessing(rgb).mean == pytest.approx(IMAGENET_MEAN)
    assert pretrained_preprocessing(rgb).std == pytest.approx(IMAGENET_STD)
    gray = dataclasses.replace(rgb, channels=1, mean=(0.4,), std=(0.2,))
    assert pretrained_preprocessing(gray).mean == pytest.approx((sum(IMAGENET_MEAN) / 3,))
    wide = Preprocessing(
        channels=3,
        scheme="clip_zscore",
        mean=(9.0,) * 3,
        std=(2.0,) * 3,
        clip_low=(0.0,) * 3,
        clip_high=(65535.0,) * 3,
    )
    assert pretrained_preprocessing(wide) is None  # 16-bit: the data's own statistics
    bands = Preprocessing(channels=4, scheme="scale_zscore", mean=(0.4,) * 4, std=(0.2,) * 4)
    assert pretrained_preprocessing(bands) is None


def test_train_job_config_flat_round_trip():
    cfg = parse_args(["--encoder", "resnet18", "--encoder-weights", "w.pth"])
    flat = cfg.to_flat()
    assert flat["encoder_weights"] == "w.pth" and flat["encoder"] == "resnet18"
    assert TrainJobConfig.from_flat(flat).encoder_weights == "w.pth"


def test_imagenet_without_the_extra_refused(monkeypatch):
    from jobs.training import encoder_init

    monkeypatch.setattr(encoder_init.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(encoder_init.EncoderWeightsError, match=r"unet-ray\[pretrained\]"):
        encoder_init.imagenet_file("efficientnet-lite0")


def test_resumed_run_loads_no_starting_weights():
    from jobs.training.init_from import load_start

    entry = {"parent": object(), "encoder_weights": None}
    (line,) = load_start(seeded(TINY, 0), entry, resuming=True)
    assert "resume wins" in line and "--init-from" in line
    assert load_start(seeded(TINY, 0), None, resuming=False) == []
