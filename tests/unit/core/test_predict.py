import contextlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from unet_core.config import PreprocessConfig
from unet_core.model import UNet
from unet_core.predict import (
    _predict_tiled,
    autocast_context,
    predict,
    predict_batch,
    predict_tensor,
    prepare_for_inference,
    resolve_device,
)

PRE = PreprocessConfig()

PROB_ATOL = 1e-5
"""Probabilities that must agree up to float32 rounding: a 3x3 conv over a tile and over the whole
image sums the same products in a different order (oneDNN blocks by size), ~1e-6 apart here, and
the blend is a weighted mean of <= 4 tiles, a few more roundings. A seam's zero padding changes
probabilities by ~1e-3 even at the edge of the receptive field, 100x this."""


def _smooth_model(num_classes=3, norm="none", *, fold_bn=True):
    """An untrained model gives near-ties everywhere; give it a decisive, local rule (small
    weights, a head bias per class) so tiles must agree wherever the receptive field fits."""
    torch.manual_seed(0)
    model = UNet(3, num_classes, base_width=4, depth=2, norm=norm)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.1)
        model.head.bias.copy_(torch.tensor([0.0, 0.5, 1.0][:num_classes]))
    return prepare_for_inference(model, "cpu", fold_bn=fold_bn)


def _sensitive_model():
    """Kaiming weights at full scale (no shrinking): all three classes appear on `_image`, and a
    seam's zero padding visibly changes the probabilities, up to the receptive field's reach."""
    torch.manual_seed(3)
    model = UNet(3, 3, base_width=4, depth=2, norm="none")
    with torch.no_grad():
        model.head.bias.copy_(torch.tensor([0.0, 0.5, 1.0]))
    return prepare_for_inference(model, "cpu")


def _model_probs(model, x, *, tta=False):
    """The model's own float32 softmax, computed here without unet_core.predict: (B, K, H, W).

    ``x`` is a normalised (B, C, H, W) batch or one HxWxC uint8 image (then B = 1). Channels-last
    input, as predict documents, so the convolutions are the ones predict runs.
    """
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(PRE.normalize(x))[None]
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        probs = model(x).float().softmax(dim=1)
        if tta:
            probs = probs + model(x.flip(-1)).float().softmax(dim=1).flip(-1)
            probs = probs + model(x.flip(-2)).float().softmax(dim=1).flip(-2)
            probs = probs / 3.0
    return probs


def _assert_is_argmax_of(mask, confidence, probs, *, atol=PROB_ATOL):
    """``mask`` is the argmax and ``confidence`` the max over classes (dim 0 of ``probs``); the
    class may only differ where the two best probabilities are within rounding of each other."""
    probs = torch.as_tensor(probs)
    top2 = probs.topk(2, dim=0).values.numpy()
    np.testing.assert_allclose(confidence, top2[0], rtol=0, atol=atol)
    decided = top2[0] - top2[1] > 2 * atol
    assert decided.mean() > 0.999, "the comparison would be vacuous: near-ties everywhere"
    np.testing.assert_array_equal(mask[decided], probs.argmax(dim=0).numpy()[decided])


def _image(h, w, seed=0):
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), dtype=np.uint8)
    for _ in range(12):
        y, x = rng.integers(0, h), rng.integers(0, w)
        img[max(0, y - 30) : y + 30, max(0, x - 30) : x + 30] = rng.integers(0, 255, 3)
    return img


def _assert_same(a, b):
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.confidence, b.confidence)


@pytest.mark.parametrize("make_model", [_smooth_model, _sensitive_model])
def test_prediction_has_input_size_and_valid_classes(make_model):
    model, img = make_model(), _image(61, 87)
    pred = predict(model, img, preprocess=PRE)
    assert pred.mask.shape == (61, 87) and pred.mask.dtype == np.uint8
    assert pred.confidence.shape == (61, 87) and pred.confidence.dtype == np.float32
    assert (pred.confidence >= 1 / 3 - 1e-6).all() and (pred.confidence <= 1.0 + 1e-6).all()
    # The classes are the argmax, the confidence the max, of the model's own softmax (fp32 here,
    # so the reference needs no bf16 autocast; untiled, so it is the same forward pass).
    exact = predict(model, img, preprocess=PRE, amp=False)
    probs = _model_probs(model, img)[0]
    _assert_is_argmax_of(exact.mask, exact.confidence, probs)
    if make_model is _sensitive_model:  # this image makes the model pick each of its classes
        assert set(np.unique(exact.mask).tolist()) == {0, 1, 2}
    else:  # the smooth model follows its head bias: class 2 everywhere
        assert (exact.mask == 2).all()


def test_grayscale_rgba_and_pil_inputs_are_converted():
    model = UNet(1, 2, base_width=4, depth=2)
    gray_pre = PreprocessConfig.for_channels(1)
    gray = np.full((20, 30), 128, dtype=np.uint8)
    assert predict(model, gray, preprocess=gray_pre).mask.shape == (20, 30)
    rgb = Image.new("RGB", (30, 20), (10, 200, 30))
    assert predict(model, rgb, preprocess=gray_pre).mask.shape == (20, 30)
    # RGB -> luminance for a 1-channel model gives what the same grayscale image gives
    lum = np.asarray(rgb.convert("L"))
    _assert_same(
        predict(model, np.asarray(rgb), preprocess=gray_pre),
        predict(model, lum, preprocess=gray_pre),
    )
    rgb_model = _smooth_model()
    rgba = np.dstack([_image(20, 30), np.full((20, 30), 7, np.uint8)])
    _assert_same(
        predict(rgb_model, rgba, preprocess=PRE), predict(rgb_model, rgba[..., :3], preprocess=PRE)
    )
    # grayscale -> replicated RGB for a 3-channel model
    _assert_same(
        predict(rgb_model, Image.fromarray(gray), preprocess=PRE),
        predict(rgb_model, np.repeat(gray[..., None], 3, axis=2), preprocess=PRE),
    )


def test_bad_inputs_are_refused_with_the_fix():
    model = _smooth_model()
    with pytest.raises(ValueError, match="uint8"):
        predict(model, np.zeros((8, 8, 3), np.uint16), preprocess=PRE)
    with pytest.raises(ValueError, match="shape"):
        predict(model, np.zeros((8, 8, 5), np.uint8), preprocess=PRE)
    with pytest.raises(ValueError, match="tile_overlap"):
        predict(model, _image(40, 40), preprocess=PRE, tile_size=16, tile_overlap=16)
    with pytest.raises(ValueError, match="equal-size"):
        predict_batch(model, [_image(10, 12), _image(10, 10)], preprocess=PRE)


def test_tiled_equals_untiled_when_image_fits_one_tile():
    model = _smooth_model()
    img = _image(120, 100)
    untiled = predict(model, img, preprocess=PRE, tile_size=None)
    _assert_same(untiled, predict(model, img, preprocess=PRE, tile_size=120, tile_overlap=32))
    # the sliding-window code itself, forced onto a single tile, is bit-identical too
    forced = _predict_tiled(
        model, img, preprocess=PRE, tile_size=128, overlap=32, tta=False, amp=None, tile_batch=4
    )
    _assert_same(untiled, forced)


def _receptive_field(model):
    """(up, down): for each output row p mod 2**depth, how many input rows above / below p the
    UNet's output row p reads (columns alike). Derived from the architecture, not measured:

    every DoubleConv is two 3x3 convs with padding 1 (one more row each side, each), a 2x2 max pool
    makes level-l row i read level-(l-1) rows 2i and 2i + 1, a 2x2 stride-2 transposed conv makes
    row p read coarse row p // 2, a skip concatenation reads both branches (union), the head is
    1x1. `test_receptive_field_matches_an_impulse_response` checks it against the model.
    """
    cfg = model.config
    assert cfg.upsampling == "transpose"
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            assert (m.kernel_size, m.padding) in {((3, 3), (1, 1)), ((1, 1), (0, 0))}, m
        elif isinstance(m, nn.ConvTranspose2d):
            assert m.kernel_size == m.stride == (2, 2), m
    depth = cfg.depth

    def double_conv(lo, hi):
        return lo - 2, hi + 2

    def encoder(level, lo, hi):  # rows of the image that encoder rows [lo, hi] at `level` read
        lo, hi = double_conv(lo, hi)
        return (lo, hi) if level == 0 else encoder(level - 1, 2 * lo, 2 * hi + 1)

    def decoder(level, lo, hi):  # the same for the decoder block that outputs `level`
        lo, hi = double_conv(lo, hi)
        skip = encoder(level, lo, hi)
        deeper = decoder if level + 1 < depth else encoder
        up = deeper(level + 1, lo // 2, hi // 2)
        return min(skip[0], up[0]), max(skip[1], up[1])

    reach = np.array([decoder(0, p, p) for p in range(2**depth)])  # (2**depth, 2): lo, hi
    rows = np.arange(2**depth)
    return rows - reach[:, 0], reach[:, 1] - rows


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_receptive_field_matches_an_impulse_response(depth):
    """Raise one input row: exactly the output rows whose derived receptive field holds it change.

    Positive weights and inputs keep every ReLU open and pass the raised value through every max
    pool, so nothing cancels; float64 keeps the far, tiny effects above rounding.
    """
    torch.manual_seed(0)
    model = UNet(3, 2, base_width=4, depth=depth, norm="none").double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.rand_like(p) + 0.1)
    up, down = _receptive_field(model)
    n, m = 128, 2**depth
    x = torch.ones(1, 3, n, n, dtype=torch.float64)
    with torch.no_grad():
        base = model(x)
        for q in range(n // 2, n // 2 + m):  # one input row per alignment
            x2 = x.clone()
            x2[..., q, n // 2] += 1.0
            changed = ((model(x2) - base).abs().amax(dim=(0, 1))[:, n // 2] > 0).numpy()
            expected = [p - up[p % m] <= q <= p + down[p % m] for p in range(n)]
            np.testing.assert_array_equal(changed, expected)
    if depth == 2:  # the model of the seam tests: it reads at most 23 rows either side
        assert max(up.max(), down.max()) == 23


def _tile_starts(size, tile, overlap):
    """Tile offsets along one side as predict documents them: every tile - overlap pixels, the
    last tile flush with the end; tiles are min(tile, size) long."""
    tile = min(tile, size)
    starts = list(range(0, size - tile + 1, tile - overlap))
    return starts if starts[-1] == size - tile else [*starts, size - tile]


def _may_differ_from_untiled(h, w, tile, overlap, up, down):
    """(H, W) bool: pixels that some covering tile computes from zero padding in place of image
    content, i.e. whose receptive field (``up`` / ``down`` rows per row mod len(up), columns alike)
    crosses an edge of that tile that is not the image's edge."""
    m = len(up)

    def inside(n, start, length):  # per index of [start, start + length): the reach stays inside
        idx = np.arange(start, start + length)
        above_ok = (start == 0) | (idx - np.take(up, idx % m) >= start)
        below_ok = (start + length == n) | (idx + np.take(down, idx % m) < start + length)
        return above_ok & below_ok

    th, tw = min(tile, h), min(tile, w)
    ys, xs = _tile_starts(h, tile, overlap), _tile_starts(w, tile, overlap)
    assert all(v % m == 0 for v in (*ys, *xs, th, tw, h, w)), "tiles off the pooling grid"
    may_differ = np.zeros((h, w), dtype=bool)
    for y in ys:
        for x in xs:
            clean = inside(h, y, th)[:, None] & inside(w, x, tw)[None, :]
            may_differ[y : y + th, x : x + tw] |= ~clean
    return may_differ


@pytest.mark.parametrize("tta", [False, True])
def test_tiled_close_to_untiled_across_seams(tta):
    """Tiling changes only pixels within the receptive field of a seam.

    A tile computes a pixel exactly as the whole image does when the pixel's receptive field lies
    inside the tile (tiles start on the 2**depth pooling grid, asserted): then every covering tile
    gives the untiled probabilities and their weighted mean is those probabilities up to float32
    rounding (PROB_ATOL). Only where a tile's zero padding replaces image content, within the
    derived reach (at most 23 rows / columns here) of an inner tile edge, may they differ.
    """
    model = _sensitive_model()
    img = _image(300, 420, seed=3)
    full = predict(model, img, preprocess=PRE, tile_size=None, tta=tta, amp=False)
    tiled = predict(model, img, preprocess=PRE, tile_size=128, tile_overlap=48, tta=tta, amp=False)
    assert np.abs(full.confidence - tiled.confidence).mean() < 0.02
    assert tiled.confidence.min() > 0 and tiled.confidence.max() <= 1.0 + 1e-6

    up, down = _receptive_field(model)
    if tta:  # a flipped pass reads, above a pixel, what the plain pass reads below its mirror
        up, down = np.maximum(up, down[::-1]), np.maximum(down, up[::-1])
    near = _may_differ_from_untiled(300, 420, 128, 48, up, down)
    far = ~near
    assert far.mean() > 0.3, "too few pixels outside the seam bands to compare"
    probs = _model_probs(model, img, tta=tta)[0]
    _assert_is_argmax_of(full.mask, full.confidence, probs)  # the reference is the model's own
    _assert_is_argmax_of(tiled.mask[far], tiled.confidence[far], probs[:, torch.from_numpy(far)])
    # ... and the bands are not slack: seams do change pixels, up to 2 rows from the band's edge
    diff = np.abs(full.confidence - tiled.confidence)
    assert diff[near].max() > 0.02 and (full.mask != tiled.mask)[near].any()
    shrunk = _may_differ_from_untiled(300, 420, 128, 48, up - 2, down - 2)
    assert (diff[near & ~shrunk] > 10 * PROB_ATOL).any()


def test_tiling_odd_tile_sizes_and_one_long_side():
    model = _smooth_model()
    img = _image(70, 333, seed=5)  # only the width exceeds the tile; tile not a multiple of 4
    full = predict(model, img, preprocess=PRE, tile_size=None, amp=False)
    tiled = predict(model, img, preprocess=PRE, tile_size=90, tile_overlap=0.25, amp=False)
    assert tiled.mask.shape == (70, 333)
    assert (full.mask == tiled.mask).mean() > 0.98
    pixels = predict(model, img, preprocess=PRE, tile_size=90, tile_overlap=22, amp=False)
    _assert_same(tiled, pixels)  # 0.25 of 90 rounds to 22 pixels


@pytest.mark.parametrize("tile_size", [None, 128])
def test_prediction_is_deterministic_and_the_models_own(tile_size):
    """Two runs give the same bits, and those are the model's own TTA softmax computed here
    without unet_core.predict (tiled: wherever no seam is in reach), so a result that is wrong
    but repeatable fails too."""
    model = _sensitive_model()
    img = _image(160, 236, seed=2)
    kwargs = {"preprocess": PRE, "tile_size": tile_size, "tile_overlap": 48, "tta": True}
    a, b = predict(model, img, amp=False, **kwargs), predict(model, img, amp=False, **kwargs)
    _assert_same(a, b)
    probs = _model_probs(model, img, tta=True)[0]
    assert set(np.unique(probs.argmax(dim=0).numpy()).tolist()) == {0, 1, 2}
    far = np.ones(a.mask.shape, dtype=bool)
    if tile_size:
        up, down = _receptive_field(model)
        up, down = np.maximum(up, down[::-1]), np.maximum(down, up[::-1])  # flipped views
        far = ~_may_differ_from_untiled(160, 236, tile_size, 48, up, down)
        assert 0.1 < far.mean() < 1, "no seam, or no pixel clear of one, to compare"
    _assert_is_argmax_of(a.mask[far], a.confidence[far], probs[:, torch.from_numpy(far)])


@pytest.mark.parametrize("size", [(40, 56), (90, 70)])
def test_predict_batch_of_one_equals_predict_exactly(size):
    model = _smooth_model(norm="batch")
    img = _image(*size, seed=1)
    kwargs = {"preprocess": PRE, "tile_size": 64, "tile_overlap": 16}  # (90, 70) is tiled
    for tta in (False, True):
        _assert_same(
            predict(model, img, tta=tta, **kwargs),
            predict_batch(model, [img], tta=tta, **kwargs)[0],
        )


def test_tta_and_batch_agree_with_single():
    model = _smooth_model()
    imgs = [_image(40, 56, seed=s) for s in range(3)]
    singles = [predict(model, im, preprocess=PRE, tta=True) for im in imgs]
    batch = predict_batch(model, imgs, preprocess=PRE, tta=True)
    assert len(batch) == 3 and predict_batch(model, [], preprocess=PRE) == []
    for s, b in zip(singles, batch, strict=True):
        assert s.mask.shape == b.mask.shape == (40, 56)
        assert (s.mask == b.mask).mean() > 0.999


def test_train_mode_model_predicts_in_eval_mode_and_is_restored():
    model = _smooth_model(norm="batch", fold_bn=False)  # BatchNorm kept: train mode would differ
    img = _image(32, 48)
    tiled = {"tile_size": 16, "tile_overlap": 4}
    expected = predict(model, img, preprocess=PRE)
    expected_tiled = predict(model, img, preprocess=PRE, **tiled)
    model.train()
    _assert_same(expected, predict(model, img, preprocess=PRE, device="cpu"))
    _assert_same(expected_tiled, predict(model, img, preprocess=PRE, **tiled))
    assert model.training
    assert all(m.training for m in model.modules())


def test_predict_tensor_returns_uint8_classes_and_probabilities():
    model = _smooth_model()
    classes, conf = predict_tensor(model, torch.randn(2, 3, 16, 24), tta=True)
    assert classes.dtype == torch.uint8 and classes.shape == (2, 16, 24)
    assert conf.dtype == torch.float32 and conf.shape == (2, 16, 24)
    assert (conf <= 1.0 + 1e-6).all()
    # classes / confidence are the argmax / max of the mean softmax over identity, horizontal and
    # vertical flip, computed here; the model is not flip-symmetric, so a flip that is not undone
    # changes the result
    model = _sensitive_model()
    x = torch.randn(2, 3, 16, 24, generator=torch.Generator().manual_seed(1))
    for tta in (False, True):
        classes, conf = predict_tensor(model, x, tta=tta, amp=False)
        probs = _model_probs(model, x, tta=tta)
        for b in range(2):
            _assert_is_argmax_of(classes[b].numpy(), conf[b].numpy(), probs[b])
        assert set(torch.unique(classes).tolist()) == {0, 1, 2}
    plain = _model_probs(model, x).amax(dim=1)
    assert (plain - _model_probs(model, x, tta=True).amax(dim=1)).abs().max() > 0.01


def test_autocast_and_device_helpers():
    assert isinstance(autocast_context("cpu", enabled=False), contextlib.nullcontext)
    forced = autocast_context("cpu", enabled=True)
    assert isinstance(forced, torch.autocast) and forced.fast_dtype == torch.bfloat16
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device() == torch.device("cpu")
    model = prepare_for_inference(UNet(3, 2, base_width=4, depth=1).train(), "cpu")
    assert not model.training
    assert model.stem[0].weight.is_contiguous(memory_format=torch.channels_last)


class _TensorShapes(TorchDispatchMode):
    """Records the shape of every tensor that an aten op takes or returns (factories, results,
    in-place targets, views: every way to get at memory through torch), except inside
    ``model``'s forward pass, whose activations the module docstring bounds per tile batch."""

    def __init__(self, model):
        super().__init__()
        self.shapes, self._depth = set(), 0
        self._hooks = [
            model.register_forward_pre_hook(lambda *_: self._enter(1)),
            model.register_forward_hook(lambda *_: self._enter(-1)),
        ]

    def _enter(self, step):
        self._depth += step

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not self._depth:
            for t in tree_leaves((args, kwargs, out)):
                if isinstance(t, torch.Tensor):
                    self.shapes.add(tuple(t.shape))
        return out

    def __exit__(self, *exc):
        for hook in self._hooks:
            hook.remove()
        return super().__exit__(*exc)


@pytest.mark.slow  # several seconds: a large image
def test_large_image_tiled_runs_with_bounded_memory():
    """4000 x 4000: 25 tiles of 1024; the accumulator is one (K, 1024, 4000) band (module doc)."""
    h = w = 4000
    k, t = 3, 1024
    model = _sensitive_model()
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[1000:3000, 500:3500] = 128
    # tile_batch 2: the per-pass (2, K, T, T) probabilities stay below one band, so the band is
    # the largest thing predict itself holds and the bound below is exactly K * T * W
    with _TensorShapes(model) as seen:
        pred = predict(
            model, img, preprocess=PRE, tile_size=t, tile_overlap=64, tile_batch=2, amp=False
        )
    assert pred.mask.shape == (4000, 4000) and pred.confidence.shape == (4000, 4000)
    assert pred.mask.dtype == np.uint8 and pred.confidence.dtype == np.float32
    # memory: no tensor outside the forward pass is larger than one band of tile rows; the full
    # (K, H, W) probabilities, or even an (H, W) weight map, never exist
    assert (k, t, w) in seen.shapes, "the band accumulator was not seen: the recording is broken"
    assert max(int(np.prod(s)) for s in seen.shapes) <= k * t * w
    assert (k, h, w) not in seen.shapes and (h, w) not in seen.shapes

    # classes: far (beyond the 23-pixel receptive field) from the grey rectangle's edges, the
    # image border and the inner tile edges, a pixel sees one constant colour, so its class and
    # confidence are the model's own on a constant patch, at the same position on the 4-pixel
    # pooling grid (transposed convs make the output periodic there, tiles start on that grid)
    up, down = _receptive_field(model)
    r, m = int(max(up.max(), down.max())), len(up)
    away = ~_may_differ_from_untiled(h, w, t, 64, up, down)
    rect = np.zeros((h, w), dtype=bool)
    rect[1000 + r : 3000 - r, 500 + r : 3500 - r] = True
    outside = np.zeros((h, w), dtype=bool)
    outside[r:-r, r:-r] = True
    outside[1000 - r : 3000 + r, 500 - r : 3500 + r] = False
    classes = set()
    for region, value in ((rect & away, 128), (outside & away, 0)):
        assert region.sum() > 1_000_000
        probs = _model_probs(model, np.full((64, 64, 3), value, np.uint8))[0, :, 32:36, 32:36]
        best, second = probs.topk(2, dim=0).values.numpy()
        assert (best - second > 100 * PROB_ATOL).all()  # decisive: rounding cannot flip it
        for i in range(m):
            for j in range(m):
                sel = region[i::m, j::m]
                assert (pred.mask[i::m, j::m][sel] == int(probs[:, i, j].argmax())).all()
                np.testing.assert_allclose(
                    pred.confidence[i::m, j::m][sel], best[i, j], rtol=0, atol=PROB_ATOL
                )
        classes |= set(probs.argmax(dim=0).flatten().tolist())
    assert classes == {0, 1, 2}  # grey: class 2; black: 0 or 1, by position on the grid


_PEAK_RSS_CHILD = """
import json, sys
import numpy as np, torch
from unet_core.config import PreprocessConfig
from unet_core.model import UNet
from unet_core.predict import predict, prepare_for_inference

h, w, k, t = map(int, sys.argv[1:])


def peak_kib():  # this process's own peak RSS: VmHWM belongs to the memory map exec made
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


torch.manual_seed(0)
model = prepare_for_inference(UNet(3, k, base_width=4, depth=2), "cpu")
img = np.zeros((h, w, 3), np.uint8)
img[h // 4 : 3 * h // 4, w // 8 : 7 * w // 8] = 200
kwargs = dict(preprocess=PreprocessConfig(), tile_size=t, tile_overlap=32, amp=False)
torch.set_num_threads(1)  # same memory; many small ops run steadily on a busy machine
predict(model, img[: 2 * t, : 2 * t], **kwargs)  # warm-up: kernels, per-tile buffers
before = peak_kib()
pred = predict(model, img, **kwargs)
after = peak_kib()
print(json.dumps({"kib": after - before, "shape": list(pred.mask.shape)}))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="reads VmHWM from /proc/self/status")
@pytest.mark.slow  # several seconds: a large image
def test_large_image_peak_memory_stays_below_the_full_probabilities():
    """Peak RSS of a fresh process predicting 4000 x 4000 with K = 8 classes, tiles of 256.

    Whatever the allocator (torch, numpy, anything), the peak may grow by the outputs (5 bytes a
    pixel, 76 MiB) plus O(K * T * W) (one band: 31 MiB) plus the per-pass tensors of 4 tiles;
    about 200 MiB here. The bound is the outputs plus half the full (K, H, W) float32
    probabilities (244 MiB): 320 MiB, so holding the full tensor (488 MiB) fails it by far
    (measured: 1.2 GiB) while the band leaves ~100 MiB of margin. The warm-up before the
    baseline takes the per-tile buffers and kernel caches out of the difference; CPU load does
    not change it. The child reads VmHWM, not ru_maxrss: after fork + exec, ru_maxrss starts at
    the parent's peak (pytest's, hundreds of MiB after the test above), VmHWM at zero.
    """
    h = w = 4000
    k, t = 8, 256
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS_CHILD, str(h), str(w), str(k), str(t)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["shape"] == [h, w]
    grown = result["kib"] * 1024
    outputs = 5 * h * w
    assert outputs / 2 < grown < outputs + 4 * k * h * w / 2, (
        f"peak RSS grew by {grown / 2**20:.0f} MiB"
    )
