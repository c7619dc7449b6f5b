import pytest
import torch

from unet_core.config import ModelConfig
from unet_core.model import UNet


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
@pytest.mark.parametrize("upsampling", ["transpose", "bilinear"])
def test_logits_match_odd_input_size(norm, upsampling):
    model = UNet(3, 4, base_width=8, depth=4, norm=norm, upsampling=upsampling, dropout=0.1)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 250, 333))
    assert out.shape == (1, 4, 250, 333)


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize("base_width", [16, 32])
def test_depths_and_widths_grayscale(depth, base_width):
    model = UNet(1, 2, base_width=base_width, depth=depth).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 37, 41)).shape == (2, 2, 37, 41)


def test_tiny_input_smaller_than_pooling_factor():
    model = UNet(3, 3, base_width=4, depth=4).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 1, 1)).shape == (1, 3, 1, 1)
        assert model(torch.randn(1, 3, 5, 3)).shape == (1, 3, 5, 3)


def test_paper_width_channels_and_config_round_trip():
    model = UNet(3, 2)
    assert model.stem[0].out_channels == 64
    assert model.down[-1][0].out_channels == 1024
    cfg = ModelConfig(
        in_channels=1,
        num_classes=5,
        base_width=8,
        depth=2,
        norm="group",
        upsampling="bilinear",
        dropout=0.2,
    )
    rebuilt = UNet.from_config(cfg)
    assert rebuilt.config == cfg


def test_gradients_reach_the_first_layer():
    model = UNet(3, 2, base_width=4, depth=2)
    model(torch.randn(2, 3, 20, 30)).sum().backward()
    assert model.stem[0].weight.grad is not None
    assert model.stem[0].weight.grad.abs().sum() > 0
