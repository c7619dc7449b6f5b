"""The exported modules in eager mode (no exporter): the in-graph padding equals F.pad and the
model's own forward at every size, the uint8-mask graph equals `unet_core.predict`'s class
values, and what the graph refuses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jobs.exporting.config import ExportConfig
from jobs.exporting.graph import (
    AnySize,
    GraphRefused,
    UInt8Mask,
    any_size,
    build_graph,
    mask_dtype,
    pad_indices,
)
from unet_core.checkpoint import LoadedModel
from unet_core.classes import ClassMap
from unet_core.config import ModelConfig, PreprocessConfig
from unet_core.ensemble import Ensemble
from unet_core.model import UNet
from unet_core.predict import predict

SIZES = [(1, 1), (7, 13), (31, 64), (5, 1), (7, 1), (1, 6), (4, 4)]
"""Odd, non-square, 1-pixel and below-the-multiple sides; (7, 1) and (1, 6) pad one side by
less than its length and the other by more: eager replicates both."""


WIDE_DATA = PreprocessConfig(
    channels=3,
    mean=(900.0,) * 3,
    std=(300.0,) * 3,
    scheme="clip_zscore",
    clip_low=(10.0,) * 3,
    clip_high=(4000.0,) * 3,
)
"""The preprocessing of a model of 16-bit data (clipped, z-scored)."""


def tiny_unet(depth: int = 2, norm: str = "batch", classes: int = 3) -> UNet:
    torch.manual_seed(0)
    config = ModelConfig(in_channels=3, num_classes=classes, base_width=4, depth=depth, norm=norm)
    model = UNet.from_config(config)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("multiple", [1, 2, 4, 8, 32])
def test_pad_indices_are_f_pad_reflect_and_replicate(multiple):
    for size in range(1, 40):
        pad = (-size) % multiple
        reflect, replicate = pad_indices(size, multiple, torch.device("cpu"))
        row = torch.arange(size, dtype=torch.float32).view(1, 1, size)
        assert reflect.shape == replicate.shape == (size + pad,)
        expected = F.pad(row, (0, pad), mode="replicate")[0, 0]
        assert torch.equal(replicate.float(), expected), (size, multiple)
        if pad < size:  # where F.pad's reflect is defined
            expected = F.pad(row, (0, pad), mode="reflect")[0, 0]
            assert torch.equal(reflect.float(), expected), (size, multiple)
        else:
            assert reflect.min() < 0  # what tells AnySize to replicate


@pytest.mark.parametrize("depth,norm", [(2, "batch"), (3, "group")])
def test_any_size_equals_the_eager_model_at_every_size(depth, norm):
    model = tiny_unet(depth, norm)
    graph = AnySize(model, 2**depth).eval()
    rng = torch.Generator().manual_seed(1)
    for h, w in SIZES:
        x = torch.randn(2, 3, h, w, generator=rng)
        with torch.no_grad():
            expected, got = model(x), graph(x)
        assert got.shape == (2, 3, h, w)
        assert torch.equal(got, expected), (h, w, (got - expected).abs().max())


def test_an_ensemble_pads_each_member_as_the_member_does():
    """Members of multiples 2 and 8: one padding for both would not be the eager ensemble's."""
    ensemble = Ensemble([tiny_unet(1), tiny_unet(3, "group")]).eval()
    graph = any_size(ensemble).eval()
    assert [m.multiple for m in graph.members] == [2, 8]
    x = torch.randn(1, 3, 7, 13, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(graph(x), ensemble(x), atol=1e-6, rtol=0)


def loaded(model: UNet, preprocess: PreprocessConfig, class_map: ClassMap) -> LoadedModel:
    return LoadedModel(
        model=model, model_config=model.config, class_map=class_map, preprocess=preprocess
    )


PREPROCESSING = {
    "legacy_uint8": PreprocessConfig.for_channels(3),
    "scale_zscore": PreprocessConfig(
        channels=3, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25), scheme="scale_zscore"
    ),
}


@pytest.mark.parametrize("scheme", sorted(PREPROCESSING))
def test_uint8_mask_graph_gives_predicts_class_values(scheme):
    preprocess = PREPROCESSING[scheme]
    class_map = ClassMap.from_names(["a", "b", "c"], values=[0, 128, 255])
    model = tiny_unet()
    graph = build_graph(loaded(model, preprocess, class_map), model, "uint8-mask")
    assert isinstance(graph, UInt8Mask)
    rng = np.random.default_rng(2)
    for h, w in SIZES:
        images = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
        with torch.no_grad():
            got = graph(torch.from_numpy(images)).numpy()
        assert got.dtype == np.uint8 and got.shape == (2, h, w)
        for image, mask in zip(images, got, strict=True):
            pred = predict(model, image, preprocess=preprocess, tile_size=None, amp=False)
            assert np.array_equal(mask, np.asarray(class_map.values)[pred.mask]), (h, w)


def test_class_values_above_255_give_a_uint16_mask():
    assert mask_dtype([0, 255]) == torch.uint8 and mask_dtype([0, 1000]) == torch.uint16
    class_map = ClassMap.from_names(["a", "b", "c"], values=[0, 1000, 40000])
    model = tiny_unet()
    graph = build_graph(
        loaded(model, PREPROCESSING["legacy_uint8"], class_map), model, "uint8-mask"
    )
    out = graph(torch.zeros(1, 5, 3, 3, dtype=torch.uint8))
    assert out.dtype == torch.uint16 and set(out.unique().tolist()) <= {0, 1000, 40000}


def test_a_model_of_16_bit_or_float_data_is_refused_as_usage():
    model = tiny_unet()
    with pytest.raises(GraphRefused, match="clip_zscore.*--graph logits") as info:
        build_graph(loaded(model, WIDE_DATA, ClassMap.binary()), model, "uint8-mask")
    assert info.value.exit_kind == "usage"
    assert isinstance(
        build_graph(loaded(model, WIDE_DATA, ClassMap.binary()), model, "logits"), AnySize
    )


def test_check_sizes_take_any_side_and_auto_has_odd_sizes_and_1x1():
    cfg = ExportConfig(model="m.pt", format="onnx", output="u.onnx", check_sizes="7x13, 1x1")
    assert cfg.sizes(multiple=16) == [(7, 13), (1, 1)]
    auto = ExportConfig(model="m.pt", format="onnx", output="u.onnx").sizes(multiple=16)
    assert (1, 1) in auto and any(h % 16 and w % 16 for h, w in auto)
    assert any(min(h, w) < 16 for h, w in auto) and cfg.graph == "logits"
    with pytest.raises(ValueError, match="sides >= 1"):
        ExportConfig(model="m.pt", format="onnx", output="u.onnx", check_sizes="0x5")
    with pytest.raises(ValueError, match="--graph must be one of logits, uint8-mask, got 'mask'"):
        ExportConfig(model="m.pt", format="onnx", output="u.onnx", graph="mask")
