import ast
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import unet_core.model
from unet_core.config import ModelConfig
from unet_core.model import UNet

NORMS = ["batch", "group", "none"]
UPSAMPLINGS = ["transpose", "bilinear"]


def _out_shape(model: UNet, *shape: int) -> tuple[int, ...]:
    with torch.no_grad():
        return tuple(model.eval()(torch.randn(*shape)).shape)


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize("upsampling", UPSAMPLINGS)
@pytest.mark.parametrize("norm", NORMS)
def test_every_option_keeps_an_odd_input_size(norm, upsampling, depth):
    model = UNet(3, 3, base_width=8, depth=depth, norm=norm, upsampling=upsampling, dropout=0.1)
    assert _out_shape(model, 1, 3, 37, 41) == (1, 3, 37, 41)


@pytest.mark.parametrize("upsampling", UPSAMPLINGS)
@pytest.mark.parametrize("norm", NORMS)
def test_paper_sized_odd_input(norm, upsampling):
    model = UNet(3, 4, base_width=4, depth=4, norm=norm, upsampling=upsampling)
    assert _out_shape(model, 1, 3, 250, 333) == (1, 4, 250, 333)


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize("base_width", [16, 32])
def test_widths_and_depths_grayscale(depth, base_width):
    model = UNet(1, 2, base_width=base_width, depth=depth)
    assert _out_shape(model, 1, 1, 37, 41) == (1, 2, 37, 41)


def test_inputs_smaller_than_the_pooling_factor():
    model = UNet(3, 3, base_width=4, depth=4)
    assert _out_shape(model, 1, 3, 1, 1) == (1, 3, 1, 1)
    assert _out_shape(model, 2, 3, 5, 3) == (2, 3, 5, 3)
    assert _out_shape(model, 1, 3, 16, 200) == (1, 3, 16, 200)


def test_paper_widths():
    model = UNet(3, 2)
    assert model.stem[0].out_channels == 64
    assert model.down[-1][0].out_channels == 1024
    assert model.head.out_channels == 2


def test_config_round_trip_and_copy():
    cfg = ModelConfig(
        in_channels=1,
        num_classes=5,
        base_width=8,
        depth=2,
        norm="group",
        upsampling="bilinear",
        dropout=0.2,
    )
    model = UNet.from_config(cfg)
    assert model.config == cfg
    model.config.depth = 7  # a copy: the model's own settings do not change
    assert model.config.depth == 2


def test_invalid_options_name_the_fix():
    with pytest.raises(ValueError, match="norm must be one of"):
        UNet(3, 2, norm="layer")
    with pytest.raises(ValueError, match="num_classes"):
        UNet(3, 1)


@pytest.mark.parametrize("base_width", [4, 6, 12, 64])
def test_group_norm_groups_divide_the_width(base_width):
    model = UNet(3, 2, base_width=base_width, depth=2, norm="group")
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert norms
    for gn in norms:
        assert gn.num_channels % gn.num_groups == 0
        assert gn.num_groups == math.gcd(gn.num_channels, 8)


def test_conv_bias_only_without_norm():
    with_bn = UNet(3, 2, base_width=4, depth=1, norm="batch")
    without = UNet(3, 2, base_width=4, depth=1, norm="none")
    assert with_bn.stem[0].bias is None
    assert without.stem[0].bias is not None
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) for m in without.modules())


def test_dropout_only_in_the_bottleneck():
    model = UNet(3, 2, base_width=4, depth=3, dropout=0.3)
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout2d)]
    assert len(drops) == 1 and drops[0] is model.down[-1][-1]
    assert drops[0].p == 0.3
    assert not any(isinstance(m, nn.Dropout2d) for m in UNet(3, 2, base_width=4).modules())


def test_kaiming_init():
    torch.manual_seed(0)
    conv = UNet(3, 2, base_width=16, depth=2).down[1][0]  # 32 -> 64 channels, 3x3
    expected = math.sqrt(2.0 / (conv.out_channels * 9))  # fan_out, ReLU gain
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.05)


def test_gradients_reach_the_first_layer():
    model = UNet(3, 2, base_width=4, depth=2)
    model(torch.randn(2, 3, 20, 30)).sum().backward()
    assert model.stem[0].weight.grad is not None
    assert model.stem[0].weight.grad.abs().sum() > 0


def test_eval_output_does_not_depend_on_the_batch():
    torch.manual_seed(0)
    model = UNet(3, 3, base_width=4, depth=2).eval()
    x = torch.randn(3, 3, 24, 40)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[1:2], model(x[1:2]))


def test_model_module_imports_only_torch():
    tree = ast.parse(Path(unet_core.model.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
            assert not (node.module or "").startswith("torch.distributed")
    assert imported <= {"__future__", "collections", "math", "torch", "unet_core"}
    assert ".cuda(" not in Path(unet_core.model.__file__).read_text()
