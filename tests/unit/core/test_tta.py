"""Test-time augmentation: flip TTA is the 3-view average predict always did, bit for bit;
dihedral TTA of a model that is equivariant by construction is its plain prediction."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from unet_core.config import PreprocessConfig
from unet_core.model import UNet
from unet_core.predict import predict, predict_batch, predict_tensor, prepare_for_inference
from unet_core.tta import TTA_MODES, mean_softmax, resolve_tta, views

PRE = PreprocessConfig()


def _unet():
    """Kaiming weights, no norm: a model far from flip- or rotation-symmetric."""
    torch.manual_seed(3)
    model = UNet(3, 3, base_width=4, depth=2, norm="none")
    with torch.no_grad():
        model.head.bias.copy_(torch.tensor([0.0, 0.5, 1.0]))
    return prepare_for_inference(model, "cpu")


class Symmetric(nn.Module):
    """Equivariant by construction: a 1x1 conv, ReLU, then a 3x3 conv whose kernel is the mean
    of its 8 rotations and mirrors (zero padding is symmetric too)."""

    def __init__(self, pointwise_only=False):
        super().__init__()
        torch.manual_seed(0)
        self.mix = nn.Conv2d(3, 8, 1)
        self.head = nn.Conv2d(8, 3, 1 if pointwise_only else 3, padding=0 if pointwise_only else 1)
        with torch.no_grad():
            k = self.head.weight
            turns = [torch.rot90(k, r, (-2, -1)) for r in range(4)]
            k.copy_(sum(turns + [t.flip(-1) for t in turns]) / 8)

    def forward(self, x):
        return self.head(torch.relu(self.mix(x)))


def _batch(h=20, w=28, seed=1):
    return torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _blobs(h, w, seed=0):
    """A smooth RGB image: random colours bilinearly upsampled 8x."""
    small = np.random.default_rng(seed).integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), np.uint8)
    return np.asarray(Image.fromarray(small).resize((w + 8, h + 8), Image.BILINEAR))[:h, :w]


def _three_view_average(model, x):
    """predict's flip TTA before `unet_core.tta` existed, operation for operation."""
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        probs = model(x).float().softmax(dim=1)
        probs += model(x.flip(-1)).float().softmax(dim=1).flip(-1)
        probs += model(x.flip(-2)).float().softmax(dim=1).flip(-2)
        probs /= 3.0
    return probs


def _eight_view_average(model, x):
    """The dihedral mean written with torch.rot90, independently of `unet_core.tta.View`."""
    x = x.contiguous(memory_format=torch.channels_last)
    total = torch.zeros(x.shape[0], 3, *x.shape[2:])
    with torch.inference_mode():
        for flip in (False, True):
            for k in range(4):
                v = torch.rot90(x.flip(-1) if flip else x, k, (-2, -1))
                p = torch.rot90(model(v).float().softmax(dim=1), -k, (-2, -1))
                total += p.flip(-1) if flip else p
    return total / 8


def test_flip_is_the_old_three_view_average_bit_for_bit():
    model, x = _unet(), _batch()
    expected = _three_view_average(model, x)
    with torch.inference_mode():
        got = mean_softmax(model, x.contiguous(memory_format=torch.channels_last), "flip")
    assert torch.equal(got, expected)
    for tta in (True, "flip", "FLIP"):
        classes, conf = predict_tensor(model, x, tta=tta, amp=False)
        assert torch.equal(conf, expected.max(dim=1).values)
        assert torch.equal(classes, expected.argmax(dim=1).to(torch.uint8))
    plain = predict_tensor(model, x, tta=False, amp=False)
    assert torch.equal(plain[1], predict_tensor(model, x, tta="none", amp=False)[1])
    assert not torch.equal(plain[1], conf)


@pytest.mark.parametrize("pointwise_only", [True, False])
def test_dihedral_of_an_equivariant_model_is_its_plain_prediction(pointwise_only):
    model = Symmetric(pointwise_only).eval()
    x = _batch(20, 28)  # not square: quarter turns swap height and width
    plain = predict_tensor(model, x, tta="none", amp=False)
    dihedral = predict_tensor(model, x, tta="dihedral", amp=False)
    torch.testing.assert_close(dihedral[1], plain[1], rtol=0, atol=1e-6)
    assert (dihedral[0] == plain[0]).float().mean() > 0.999  # differ only at float ties
    # the same model with its kernel left unsymmetrised is not equivariant: the test can fail
    with torch.no_grad():
        model.head.weight.add_(torch.randn_like(model.head.weight))
    if not pointwise_only:
        plain = predict_tensor(model, x, tta="none", amp=False)
        dihedral = predict_tensor(model, x, tta="dihedral", amp=False)
        assert (dihedral[1] - plain[1]).abs().max() > 1e-3


def test_dihedral_is_the_eight_view_mean():
    model, x = _unet(), _batch(20, 28)
    expected = _eight_view_average(model, x)
    classes, conf = predict_tensor(model, x, tta="dihedral", amp=False)
    torch.testing.assert_close(conf, expected.max(dim=1).values, rtol=0, atol=1e-5)
    flip = predict_tensor(model, x, tta="flip", amp=False)[1]
    assert (conf - flip).abs().max() > 1e-3


def test_views_are_the_eight_symmetries_and_invert_exactly():
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).view(1, 2, 3, 4)
    seen = set()
    for view in views("dihedral"):
        y = view.apply(x)
        assert y.shape[-2:] in ((3, 4), (4, 3))
        assert torch.equal(view.invert(y), x)
        seen.add((tuple(y.shape), tuple(y.flatten().tolist())))
    assert len(seen) == 8 and len(views("flip")) == 3 and len(views(False)) == 1
    assert views("dihedral")[0].apply(x) is x  # identity first


@pytest.mark.parametrize("bad", ["rot", "", 2, None])
def test_invalid_mode_names_the_modes(bad):
    model, x = _unet(), _batch()
    msg = "tta must be one of \\('none', 'hflip', 'flip', 'dihedral'\\)"
    with pytest.raises(ValueError, match=msg):
        resolve_tta(bad)
    with pytest.raises(ValueError, match=msg):
        predict_tensor(model, x, tta=bad)
    with pytest.raises(ValueError, match=msg):
        predict(model, _image(16, 16), preprocess=PRE, tta=bad)
    with pytest.raises(ValueError, match=msg):
        predict_batch(model, [], preprocess=PRE, tta=bad)
    assert TTA_MODES == ("none", "hflip", "flip", "dihedral")


def test_hflip_never_turns_a_scene_upside_down():
    # A model that only sees the top half's mean: any up-down view would change its answer.
    x = torch.zeros(1, 1, 8, 8)
    x[..., :4, :] = 1.0
    selected = views("hflip")
    assert len(selected) == 2 and not any(v.vflip or v.transpose for v in selected)
    for view in selected:
        assert torch.equal(view.apply(x)[..., :4, :], x[..., :4, :])
        assert torch.equal(view.invert(view.apply(x)), x)


def test_tiled_prediction_with_dihedral():
    image = _image(70, 100, seed=2)
    # pointwise model: tiles change nothing, so tiled dihedral = untiled plain up to rounding
    model = Symmetric(pointwise_only=True).eval()
    plain = predict(model, image, preprocess=PRE, tile_size=None, amp=False)
    tiled = predict(
        model, image, preprocess=PRE, tile_size=48, tile_overlap=12, tta="dihedral", amp=False
    )
    np.testing.assert_allclose(tiled.confidence, plain.confidence, rtol=0, atol=1e-5)
    assert (tiled.mask == plain.mask).mean() > 0.999
    # a UNet at half its initial weights (so tiles agree away from seams), on a smooth image of
    # odd sides: tiles, some not square at the image edge, all turned by the views
    model = _unet()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
        model.head.bias.zero_()
    image = _blobs(75, 101, seed=4)
    kwargs = {"preprocess": PRE, "amp": False}
    full = predict(model, image, tile_size=None, tta="dihedral", **kwargs)
    tiled = predict(model, image, tile_size=64, tile_overlap=16, tta="dihedral", **kwargs)
    plain = predict(model, image, tile_size=None, **kwargs)
    assert tiled.mask.shape == (75, 101) and tiled.confidence.dtype == np.float32
    assert len(np.unique(full.mask)) == 3
    assert (tiled.mask == full.mask).mean() > 0.95  # measured 0.97
    assert (plain.mask == full.mask).mean() < 0.8  # measured 0.55: the views do matter
    batch = predict_batch(model, [image], tile_size=64, tile_overlap=16, tta="dihedral", **kwargs)
    np.testing.assert_array_equal(batch[0].confidence, tiled.confidence)
