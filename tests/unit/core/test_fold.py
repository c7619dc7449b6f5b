import numpy as np
import pytest
import torch
from torch import nn

from unet_core.checkpoint import load_checkpoint, save_checkpoint
from unet_core.classes import ClassMap
from unet_core.config import PreprocessConfig
from unet_core.fold import fold_batchnorm
from unet_core.model import UNet
from unet_core.precision import autocast_context
from unet_core.predict import predict, prepare_for_inference

PRE = PreprocessConfig()

DECIDED_MARGIN = 0.1
"""Pixels whose float32 top-2 logit margin exceeds this share of the mean |logit| are the ones
bf16 can decide: there unfolded bf16 and float32 agree on every pixel (measured), elsewhere a
bf16 rounding flips near-ties whether folded or not."""


def _bn_model(seed=0, *, upsampling="transpose", norm="batch"):
    """Random weights and BatchNorm running statistics / affine far from the identity (mean
    ~ N(0, 0.5), var in [0.5, 2], gamma in [0.5, 1.5], beta ~ N(0, 0.2)), as after training."""
    torch.manual_seed(seed)
    model = UNet(3, 3, base_width=8, depth=3, norm=norm, upsampling=upsampling)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return model.train()  # as a training loop leaves it


def _logits(model, x, *, amp):
    with torch.inference_mode(), autocast_context("cpu", amp):
        return model(x.contiguous(memory_format=torch.channels_last)).float()


@pytest.mark.parametrize("upsampling", ["transpose", "bilinear"])
def test_folded_model_computes_what_the_batchnorm_model_computes(upsampling):
    model = _bn_model(upsampling=upsampling)
    plain = prepare_for_inference(model, "cpu", fold_bn=False)
    folded = prepare_for_inference(model, "cpu")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in plain.modules()) == 2 + 2 * 3 + 2 * 3
    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(1))

    ref = _logits(plain, x, amp=False)  # (B, K, H, W)
    scale = ref.abs().mean().item()
    # float32: the same function up to rounding (a product folded into each weight)
    torch.testing.assert_close(_logits(folded, x, amp=False), ref, rtol=1e-4, atol=1e-4 * scale)

    # bf16: folding adds no error beyond bf16's own (one rounding of the folded weights in
    # place of the conv's and the BatchNorm's)
    plain16, folded16 = _logits(plain, x, amp=True), _logits(folded, x, amp=True)
    bf16_error = (plain16 - ref).abs().mean()
    assert 0 < (folded16 - ref).abs().mean() < 1.5 * bf16_error
    assert (folded16 - plain16).abs().mean() < 3 * bf16_error
    assert (folded16 - plain16).abs().max() < 0.25 * ref.abs().max()
    top2 = ref.topk(2, dim=1).values
    decided = top2[:, 0] - top2[:, 1] > DECIDED_MARGIN * scale  # (B, H, W)
    assert decided.float().mean() > 0.8, "too few decisive pixels: the comparison is vacuous"
    agree = folded16.argmax(dim=1) == plain16.argmax(dim=1)
    assert agree[decided].float().mean() >= 0.999
    assert agree.float().mean() >= 0.99


def test_predict_with_a_folded_model_agrees_with_the_batchnorm_model():
    model = _bn_model(seed=2)
    plain = prepare_for_inference(model, "cpu", fold_bn=False)
    folded = prepare_for_inference(model, "cpu")
    img = np.random.default_rng(0).integers(0, 256, (150, 170, 3), dtype=np.uint8)
    kwargs = {"preprocess": PRE, "tile_size": 96, "tile_overlap": 16}
    a, b = predict(plain, img, amp=False, **kwargs), predict(folded, img, amp=False, **kwargs)
    assert (a.mask == b.mask).mean() >= 0.999
    np.testing.assert_allclose(a.confidence, b.confidence, rtol=0, atol=1e-4)
    a, b = predict(plain, img, amp=True, **kwargs), predict(folded, img, amp=True, **kwargs)
    assert (a.mask == b.mask).mean() >= 0.99
    assert np.abs(a.confidence - b.confidence).mean() < 0.01


def test_the_callers_model_is_not_changed_and_still_saves(tmp_path):
    model = _bn_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = prepare_for_inference(model, "cpu")
    assert folded is not model and model.training
    assert all(m.training for m in model.modules())
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 14
    # folded parameter names are the original convs' (BatchNorm -> Identity keeps the indices)
    conv_names = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert conv_names == {n for n, m in folded.named_modules() if isinstance(m, nn.Conv2d)}
    assert folded.stem[0].bias is not None and isinstance(folded.stem[1], nn.Identity)
    assert folded.stem[0].weight.is_contiguous(memory_format=torch.channels_last)

    # the original still saves and loads as a BatchNorm checkpoint, and prepares the same way
    path = tmp_path / "unet.pt"
    classes = ClassMap.binary(("bg", "fg"), (0, 255))
    save_checkpoint(path, model, model_config=model.config, class_map=classes, preprocess=PRE)
    loaded = load_checkpoint(path)
    assert loaded.model.state_dict().keys() == before.keys()
    x = torch.randn(1, 3, 40, 56)
    again = prepare_for_inference(loaded.model, "cpu")
    assert torch.equal(_logits(again, x, amp=False), _logits(folded, x, amp=False))


@pytest.mark.parametrize("norm", ["group", "none"])
def test_models_without_batchnorm_pass_through(norm):
    model = _bn_model(norm=norm)
    folded = fold_batchnorm(model)
    assert folded is not model and not folded.training and model.training
    kinds = [type(m) for m in model.modules()]
    assert [type(m) for m in folded.modules()] == kinds
    assert (nn.GroupNorm in kinds) == (norm == "group")
    state, folded_state = model.state_dict(), folded.state_dict()
    assert state.keys() == folded_state.keys()
    assert all(torch.equal(state[k], folded_state[k]) for k in state)
    x = torch.randn(1, 3, 48, 64)
    assert torch.equal(_logits(model.eval(), x, amp=False), _logits(folded, x, amp=False))


def test_only_neighbouring_conv_batchnorm_pairs_with_running_stats_fold():
    no_stats = nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4, track_running_stats=False)
    )
    transposed = nn.Sequential(nn.ConvTranspose2d(3, 4, 2, stride=2), nn.BatchNorm2d(4))
    apart = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4))
    folds = nn.Sequential(nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4), nn.ReLU())
    for kept in (no_stats, transposed, apart):
        assert [type(m) for m in fold_batchnorm(kept)] == [type(m) for m in kept]
    folded = fold_batchnorm(folds)
    assert [type(m) for m in folded] == [nn.Conv2d, nn.Identity, nn.ReLU]
    with torch.no_grad():
        folds[1].running_mean.uniform_(-1, 1)
        folds[1].running_var.uniform_(0.5, 2)
    folded = fold_batchnorm(folds)
    x = torch.randn(2, 3, 9, 11)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), folds.eval()(x), rtol=1e-5, atol=1e-5)
