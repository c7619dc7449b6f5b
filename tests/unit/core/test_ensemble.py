"""Ensembles (unet_core.ensemble): one member is that member bit for bit; several give the mean
of their softmax, with and without TTA; members that do not fit are refused; the file round
trips and the single-model format still loads."""

import numpy as np
import pytest
import torch

from unet_core.checkpoint import FORMAT, LoadedModel, load_checkpoint, save_checkpoint
from unet_core.classes import ClassMap
from unet_core.config import ModelConfig, PreprocessConfig
from unet_core.ensemble import (
    ENSEMBLE_FORMAT,
    Ensemble,
    ensemble_of,
    ensemble_to_bytes,
    model_multiple,
    read_members,
    save_ensemble,
)
from unet_core.model import UNet
from unet_core.predict import predict, predict_tensor, prepare_for_inference
from unet_core.tta import TTA_MODES, mean_softmax

CLASSES = ClassMap.from_names(["background", "a", "b"], values=[0, 1, 2])
PRE = PreprocessConfig()


def _member(seed: int, *, depth: int = 2, num_classes: int = 3, norm: str = "batch") -> UNet:
    """A random UNet whose BatchNorm statistics are not the defaults (folding changes it)."""
    torch.manual_seed(seed)
    model = UNet(3, num_classes, base_width=4, depth=depth, norm=norm)
    model(torch.randn(4, 3, 24, 24) * 2 + 0.5)  # train mode: running statistics move
    with torch.no_grad():
        model.head.bias.add_(torch.randn(num_classes))
    return model.eval()


def _loaded(model: UNet, *, classes=CLASSES, pre=PRE, extra=None) -> LoadedModel:
    return LoadedModel(model, model.config, classes, pre, dict(extra or {}))


def _image(seed: int = 0, h: int = 37, w: int = 29) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_one_member_is_the_member_bit_for_bit(tmp_path):
    member = _member(0)
    x = torch.randn(2, 3, 37, 29)
    with torch.no_grad():
        assert torch.equal(Ensemble([member])(x), member(x))
    save_ensemble(tmp_path / "one.pt", [_loaded(member)])
    loaded = load_checkpoint(tmp_path / "one.pt")
    assert loaded.members == 1 and isinstance(loaded.model, Ensemble)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), member(x))
    # Masks and confidences through predict, prepared as the jobs prepare, with every TTA mode.
    alone, inside = prepare_for_inference(member, "cpu"), prepare_for_inference(loaded.model, "cpu")
    image = _image()
    for mode in TTA_MODES:
        a = predict(alone, image, preprocess=PRE, tta=mode)
        b = predict(inside, image, preprocess=PRE, tta=mode)
        assert np.array_equal(a.mask, b.mask) and np.array_equal(a.confidence, b.confidence), mode
        assert len(np.unique(a.mask)) > 1  # a mask that says something
    # Tiled, too (several tiles blended).
    big = _image(1, 90, 70)
    a = predict(alone, big, preprocess=PRE, tta="flip", tile_size=48, tile_overlap=8)
    b = predict(inside, big, preprocess=PRE, tta="flip", tile_size=48, tile_overlap=8)
    assert a.tiled and np.array_equal(a.confidence, b.confidence)


def _mean_probs(models, x, mode):
    with torch.no_grad():
        return sum(mean_softmax(m, x, mode) for m in models) / len(models)


@pytest.mark.parametrize("mode", ["none", "dihedral"])
def test_two_members_give_the_mean_of_their_softmax(mode):
    members = [_member(0), _member(1, depth=3)]
    ensemble = Ensemble(members).eval()
    x = torch.randn(2, 3, 21, 19)
    with torch.no_grad():
        out = ensemble(x)
        assert out.dtype == torch.float32 and out.shape == (2, 3, 21, 19)
        expected = sum(m(x).softmax(dim=1) for m in members) / 2
        torch.testing.assert_close(out.softmax(dim=1), expected, atol=1e-6, rtol=0)
    # TTA over the ensemble = each member's TTA averaged.
    alone = [_mean_probs([m], x, mode) for m in members]
    want = sum(alone) / 2
    torch.testing.assert_close(_mean_probs([ensemble], x, mode), want, atol=1e-6, rtol=0)
    for probs in alone:  # the members really disagree: neither alone gives the mean
        assert (probs - want).abs().max() > 1e-2
    classes, confidence = predict_tensor(ensemble, x, tta=mode, amp=False)
    want_conf, want_classes = want.max(dim=1)
    torch.testing.assert_close(confidence, want_conf, atol=1e-6, rtol=0)
    agree = (classes == want_classes.to(torch.uint8)).float().mean()
    assert agree > 0.999  # only exact ties (none here, in practice) could round apart


def test_the_mean_is_taken_in_float32_under_autocast():
    ensemble = Ensemble([_member(0), _member(1)]).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = ensemble(torch.randn(1, 3, 16, 16))
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_required_multiple_is_the_largest_of_the_members():
    assert model_multiple(_member(0, depth=2)) == 4
    assert Ensemble([_member(0, depth=2), _member(1, depth=3)]).required_multiple == 8
    assert model_multiple(Ensemble([_member(0, depth=3), _member(1, depth=1)])) == 8


def test_members_that_do_not_fit_are_refused(tmp_path):
    a = _member(0)
    with pytest.raises(ValueError, match=r"member 1 has num_classes=2 but member 0 has 3"):
        Ensemble([a, _member(1, num_classes=2)])
    with pytest.raises(ValueError, match="at least one member"):
        Ensemble([])
    with pytest.raises(ValueError, match="at least one member"):
        save_ensemble(tmp_path / "none.pt", [])
    other_classes = ClassMap.from_names(["background", "x", "y"], values=[0, 1, 2])
    with pytest.raises(ValueError, match=r"member 1 has another class map than member 0"):
        ensemble_of([_loaded(a), _loaded(_member(1), classes=other_classes)])
    gray = PreprocessConfig(mean=(0.4, 0.4, 0.4), std=(0.2, 0.2, 0.2))
    with pytest.raises(ValueError, match=r"member 2 has another preprocessing than member 0"):
        save_ensemble(tmp_path / "e.pt", [_loaded(a), _loaded(a), _loaded(_member(1), pre=gray)])
    # A member given as a file is named by its path.
    torch.manual_seed(0)
    one_channel = UNet(1, 3, base_width=4, depth=2)
    path = tmp_path / "gray.pt"
    save_checkpoint(
        path, one_channel, model_config=one_channel.config, class_map=CLASSES, preprocess=PRE
    )
    with pytest.raises(ValueError, match=r"member 1 \(.*gray\.pt\) has another in_channels"):
        save_ensemble(tmp_path / "e.pt", [_loaded(a), path])
    assert not (tmp_path / "e.pt").exists()
    # A member that is itself an ensemble of several: pass its members instead.
    save_ensemble(tmp_path / "two.pt", [_loaded(a), _loaded(_member(1))])
    with pytest.raises(ValueError, match=r"member 0 is itself an ensemble of 2 models"):
        save_ensemble(tmp_path / "e.pt", [tmp_path / "two.pt"])


def test_round_trip_of_an_ensemble_file(tmp_path):
    first, second = _member(0), _member(1, depth=3)
    single = tmp_path / "second.pt"
    save_checkpoint(
        single,
        second,
        model_config=second.config,
        class_map=CLASSES,
        preprocess=PRE,
        extra={"fold": 1},
    )
    path = tmp_path / "ens.pt"
    save_ensemble(path, [_loaded(first, extra={"fold": 0}), single], extra={"oof_miou": 0.5})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ens.pt", "second.pt"]  # no temp file
    raw = torch.load(path, weights_only=True)  # plain data: no pickled code
    assert raw["format"] == ENSEMBLE_FORMAT != FORMAT  # an older release refuses it by format
    assert [m["extra"] for m in raw["members"]] == [{"fold": 0}, {"fold": 1}]

    loaded = load_checkpoint(path)
    assert loaded.members == 2 and isinstance(loaded.model, Ensemble)
    assert not loaded.model.training
    assert loaded.model_config == first.config  # the first member's
    assert (loaded.class_map, loaded.preprocess) == (CLASSES, PRE)
    assert loaded.extra == {"oof_miou": 0.5}
    x = torch.randn(1, 3, 21, 34)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), Ensemble([first, second]).eval()(x))
        assert torch.equal(
            load_checkpoint(ensemble_to_bytes([first_loaded := _loaded(first)])).model(x), first(x)
        )
    assert first_loaded.members == 1
    members = read_members(path)
    assert [m.extra for m in members] == [{"fold": 0}, {"fold": 1}]
    for got, want in zip(members, (first, second), strict=True):
        assert isinstance(got.model, UNet) and got.model_config == want.config
        for key, value in want.state_dict().items():
            assert torch.equal(got.model.state_dict()[key], value), key
    assert [m.extra for m in read_members(single)] == [{"fold": 1}]


def test_the_single_model_format_still_loads(tmp_path):
    model = _member(0)
    save_checkpoint(
        tmp_path / "m.pt", model, model_config=model.config, class_map=CLASSES, preprocess=PRE
    )
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert loaded.members == 1 and type(loaded.model) is UNet
    assert torch.load(tmp_path / "m.pt", weights_only=True)["format"] == FORMAT
    # save_checkpoint of a one-member ensemble writes the member; of two it refuses.
    save_checkpoint(
        tmp_path / "e1.pt",
        Ensemble([model]),
        model_config=model.config,
        class_map=CLASSES,
        preprocess=PRE,
    )
    assert type(load_checkpoint(tmp_path / "e1.pt").model) is UNet
    with pytest.raises(TypeError, match="save_ensemble"):
        save_checkpoint(
            tmp_path / "e2.pt",
            Ensemble([model, _member(1)]),
            model_config=model.config,
            class_map=CLASSES,
            preprocess=PRE,
        )
    # A damaged ensemble file is named.
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    bad = {
        "format": ENSEMBLE_FORMAT,
        "class_map": payload["class_map"],
        "preprocess": payload["preprocess"],
        "members": [
            {
                "model_config": ModelConfig(in_channels=3, num_classes=3, base_width=8).to_dict(),
                "state_dict": payload["state_dict"],
            }
        ],
    }
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad\.pt member 0: weights or configs"):
        load_checkpoint(tmp_path / "bad.pt")
