"""The device paths of unet_core.predict: on-device normalisation, pinned copies, autocast dtype,
cuDNN benchmark, tile size, torch.compile. CPU checks run everywhere; CUDA ones skip without it."""

import inspect
import logging

import numpy as np
import pytest
import torch

import unet_core.predict as predict_module
from unet_core import precision
from unet_core.compiled import CompiledModel, compile_model
from unet_core.config import PreprocessConfig
from unet_core.model import UNet
from unet_core.precision import autocast_dtype, cpu_supports_bf16
from unet_core.predict import (
    _predict_tiled,
    default_tile_size,
    enable_cudnn_benchmark,
    predict,
    predict_batch,
    predict_tensor,
    prepare_for_inference,
    to_device,
)
from unet_core.transforms import normalize_batch

PRE = PreprocessConfig(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _model(seed=0, norm="batch"):
    torch.manual_seed(seed)
    return UNet(3, 3, base_width=4, depth=2, norm=norm)


def _images(n, h, w, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


@pytest.mark.parametrize(
    "pre",
    [PreprocessConfig(), PRE, PreprocessConfig(channels=1, mean=(0.3,), std=(0.17,))],
    ids=["default", "imagenet", "gray"],
)
def test_normalize_batch_equals_preprocess_normalize_bit_for_bit(pre):
    """Every uint8 value in every channel: the torch and the NumPy normalisation agree exactly."""
    values = np.arange(256, dtype=np.uint8)
    image = np.stack([np.roll(values, 7 * c) for c in range(pre.channels)], axis=-1)
    image = np.broadcast_to(image[None], (3, 256, pre.channels)).copy()  # (3, 256, C)
    want = pre.normalize(image)  # (C, 3, 256)
    got = normalize_batch(torch.from_numpy(image)[None], pre)[0].numpy()
    assert got.dtype == want.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))


def _job_forward(model, images, *, amp, device="cpu"):
    """What jobs/inference does with a batch: stack the uint8 images, copy them to the device,
    normalise there, predict_tensor."""
    x = normalize_batch(to_device(torch.from_numpy(np.stack(images)), device), PRE)
    return predict_tensor(model, x, amp=amp)


def _assert_is_the_models_own(preds, model, images, *, device="cpu", atol=1e-5):
    """Each prediction is the model's float32 softmax computed here without unet_core.predict
    or normalize_batch (NumPy normalisation, forward, softmax): the confidence its max, the
    class its argmax wherever the two best classes are not within rounding of each other. An
    independent reference: a path that is wrong but repeatable fails here."""
    x = torch.from_numpy(np.stack([PRE.normalize(image) for image in images])).to(device)
    with torch.inference_mode():
        probs = model(x.contiguous(memory_format=torch.channels_last)).float().softmax(dim=1)
    top2 = probs.topk(2, dim=1).values.cpu().numpy()  # (B, 2, H, W)
    classes = probs.argmax(dim=1).cpu().numpy()
    for pred, best, want in zip(preds, top2, classes, strict=True):
        np.testing.assert_allclose(pred.confidence, best[0], rtol=0, atol=atol)
        decided = best[0] - best[1] > 2 * atol
        assert decided.mean() > 0.99, "near-ties everywhere: the comparison would be vacuous"
        np.testing.assert_array_equal(pred.mask[decided], want[decided])
    assert len(np.unique(classes)) > 1, "one class everywhere: the comparison would be weak"


def test_predict_equals_the_jobs_forward_pass_bit_for_bit():
    """With the same prepared model and the same batch, predict_batch gives exactly the job's
    classes and confidences, and predict those of a batch of one. (float32 convolutions of a
    batch of 3 and of 1 may round apart in the last bit: oneDNN blocks by batch size.)"""
    model = prepare_for_inference(_model(), "cpu")
    images = _images(3, 40, 56)
    for amp in (None, False):
        classes, conf = _job_forward(model, images, amp=amp)
        for i, pred in enumerate(predict_batch(model, images, preprocess=PRE, amp=amp)):
            np.testing.assert_array_equal(pred.mask, classes[i].numpy())
            np.testing.assert_array_equal(pred.confidence, conf[i].numpy())
        classes, conf = _job_forward(model, images[:1], amp=amp)
        pred = predict(model, images[0], preprocess=PRE, amp=amp)
        np.testing.assert_array_equal(pred.mask, classes[0].numpy())
        np.testing.assert_array_equal(pred.confidence, conf[0].numpy())
    # ... and both are the model's own (the job's path and predict share predict_tensor)
    _assert_is_the_models_own(
        predict_batch(model, images, preprocess=PRE, amp=False), model, images
    )


def test_pixels_travel_to_the_device_as_uint8(monkeypatch):
    """Every path copies uint8 pixels (whole images or one band of tile rows) to the model's
    device through `to_device` and normalises there; nothing float comes from the host."""
    seen = []
    real = predict_module.to_device

    def recording(tensor, device):
        seen.append((tensor.dtype, tuple(tensor.shape), tensor.device.type))
        return real(tensor, device)

    monkeypatch.setattr(predict_module, "to_device", recording)
    model = prepare_for_inference(_model(), "cpu")
    predict(model, _images(1, 40, 56)[0], preprocess=PRE)
    assert seen[0] == (torch.uint8, (1, 40, 56, 3), "cpu")
    seen.clear()
    predict_batch(model, _images(2, 40, 56), preprocess=PRE)
    assert seen[0] == (torch.uint8, (2, 40, 56, 3), "cpu")
    seen.clear()
    predict(model, _images(1, 100, 150)[0], preprocess=PRE, tile_size=64, tile_overlap=16)
    bands = [s for s in seen if s[0] == torch.uint8]
    assert [s[1] for s in bands] == [(64, 150, 3)] * 2  # rows 0 and 36: two bands of tile rows
    # the rest are the normalised tiles, handed to the forward pass already on the device
    assert all(s[0] == torch.float32 for s in seen if s[0] != torch.uint8)


def test_tile_batch_changes_nothing_but_the_batching():
    model = prepare_for_inference(_model(norm="none"), "cpu")
    image = _images(1, 150, 230, seed=4)[0]
    kwargs = {"preprocess": PRE, "tile_size": 64, "tile_overlap": 16}
    preds = [predict(model, image, tile_batch=b, amp=None, **kwargs) for b in (1, 3, 4, 16)]
    for p in preds[1:]:
        assert (p.mask == preds[0].mask).mean() > 0.999
        # oneDNN blocks by batch size: float32 sums may round apart in the last bit
        np.testing.assert_allclose(p.confidence, preds[0].confidence, rtol=0, atol=1e-5)


def test_to_device_on_the_cpu_is_a_no_op():
    x = torch.arange(6, dtype=torch.uint8)
    assert to_device(x, "cpu") is x
    assert to_device(x, torch.device("cpu")) is x


def test_autocast_dtype_per_device(monkeypatch):
    # CPU: bf16 where native, for inference and training alike; fp32 elsewhere
    assert autocast_dtype("cpu", True) == torch.bfloat16
    assert autocast_dtype("cpu", False) is None
    native = torch.bfloat16 if cpu_supports_bf16() else None
    assert autocast_dtype("cpu") == autocast_dtype("cpu", training=True) == native
    assert autocast_dtype("cpu", False, training=True) is None
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: False)
    assert autocast_dtype("cpu", training=True) is None  # emulated bf16 is slower: fp32
    monkeypatch.undo()
    # CUDA: bf16 from compute capability 8.0, fp16 below it for inference only
    for capability, inference in (
        ((7, 0), torch.float16),
        ((7, 5), torch.float16),
        ((8, 0), torch.bfloat16),
        ((9, 0), torch.bfloat16),
    ):
        monkeypatch.setattr(precision, "_cuda_capability", lambda device, c=capability: c)
        assert autocast_dtype("cuda") == inference
        assert autocast_dtype("cuda:1", True) == inference
        assert autocast_dtype("cuda", training=True) == torch.bfloat16  # no GradScaler in fit
        assert autocast_dtype("cuda", False) is None


def test_tile_size_and_cudnn_benchmark_helpers():
    assert default_tile_size("cpu") == 512 and default_tile_size(torch.device("cpu")) == 512
    assert default_tile_size("cuda") == 1024 and default_tile_size("cuda:0") == 1024
    assert inspect.signature(predict).parameters["tile_size"].default == 512  # library default
    before = torch.backends.cudnn.benchmark
    assert enable_cudnn_benchmark("cpu") is False
    assert torch.backends.cudnn.benchmark == before


def _failing_backend(graph, example_inputs):
    raise RuntimeError("no C++ compiler here")


def test_compile_falls_back_to_eager_with_a_warning(caplog):
    model = prepare_for_inference(_model(), "cpu")
    compiled = compile_model(model, backend=_failing_backend)
    image = _images(1, 40, 56)[0]
    with caplog.at_level(logging.WARNING, logger="unet_core.compiled"):
        got = predict(compiled, image, preprocess=PRE)
    assert not compiled.compiled
    assert "torch.compile failed" in caplog.text and "no C++ compiler here" in caplog.text
    want = predict(model, image, preprocess=PRE)
    np.testing.assert_array_equal(got.mask, want.mask)
    np.testing.assert_array_equal(got.confidence, want.confidence)
    assert compiled.state_dict().keys() == {f"module.{k}" for k in model.state_dict()}


def test_compile_keeps_compiling_when_the_input_is_at_fault():
    compiled = compile_model(prepare_for_inference(_model(), "cpu"), backend=_failing_backend)
    with pytest.raises(RuntimeError, match="channels"):
        compiled(torch.zeros(1, 5, 16, 16))  # 5 channels for a 3-channel model: eager fails too
    assert compiled.compiled


def test_compiled_model_traces_and_predicts_like_eager():
    """aot_eager traces the graph through dynamo and AOTAutograd without generating code: quick,
    and the same values as eager. (The default inductor backend takes a minute or more on a
    2-core CPU; the report of the throughput issue gives its timings.)"""
    model = prepare_for_inference(_model(), "cpu")
    compiled = prepare_for_inference(_model(), "cpu", compile=True)
    assert isinstance(compiled, CompiledModel) and compiled.compiled
    traced = compile_model(model, backend="aot_eager", dynamic=False)
    image = _images(1, 40, 56)[0]
    got, want = (predict(m, image, preprocess=PRE, amp=False) for m in (traced, model))
    assert traced.compiled
    np.testing.assert_array_equal(got.mask, want.mask)
    np.testing.assert_allclose(got.confidence, want.confidence, rtol=0, atol=1e-6)


# --- CUDA --------------------------------------------------------------------------------------
@pytest.mark.gpu
@cuda
def test_cuda_copies_are_pinned_and_results_match_the_host_copy():
    x = torch.randint(0, 256, (2, 64, 80, 3), dtype=torch.uint8)
    on_gpu = to_device(x, "cuda")
    assert on_gpu.device.type == "cuda" and not x.is_pinned()  # the pinned copy is a new tensor
    assert torch.equal(on_gpu.cpu(), x)
    pinned = x.pin_memory()
    assert torch.equal(to_device(pinned, "cuda").cpu(), x)
    assert to_device(on_gpu, on_gpu.device) is on_gpu


@pytest.mark.gpu
@cuda
def test_cuda_autocast_dtype_follows_the_compute_capability():
    major, _ = torch.cuda.get_device_capability()
    want = torch.bfloat16 if major >= 8 else torch.float16
    assert autocast_dtype("cuda") == want and autocast_dtype(torch.device("cuda", 0)) == want
    assert autocast_dtype("cuda", training=True) == torch.bfloat16
    ctx = precision.autocast_context("cuda")
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == want


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("amp", [None, False])
def test_cuda_paths_agree_with_each_other_and_the_cpu(amp, monkeypatch):
    # forward convolutions are deterministic; the transposed ones are cuDNN's backward-data
    # kernels, some of which add with atomics: ask for deterministic ones, and no TF32, so that
    # float32 here compares with float32 on the CPU
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    cpu_model = prepare_for_inference(_model(norm="batch"), "cpu")
    model = prepare_for_inference(_model(norm="batch"), "cuda")
    assert model.stem[0].weight.is_cuda
    images = _images(2, 96, 128, seed=2)
    # job-style forward pass (on-device normalisation) == predict_batch / predict, bit for bit
    classes, conf = _job_forward(model, images, amp=amp, device="cuda")
    batch = predict_batch(model, images, preprocess=PRE, amp=amp, tile_size=None)
    for i, pred in enumerate(batch):
        np.testing.assert_array_equal(pred.mask, classes[i].cpu().numpy())
        np.testing.assert_array_equal(pred.confidence, conf[i].cpu().numpy())
    classes, conf = _job_forward(model, images[:1], amp=amp, device="cuda")
    single = predict(model, images[0], preprocess=PRE, amp=amp, tile_size=None)
    np.testing.assert_array_equal(single.mask, classes[0].cpu().numpy())
    np.testing.assert_array_equal(single.confidence, conf[0].cpu().numpy())
    if amp is False:  # float32: the model's own softmax, on this device and on the CPU's
        _assert_is_the_models_own(batch, model, images, device="cuda")
        _assert_is_the_models_own(batch, cpu_model, images, atol=1e-4)
    # the sliding window forced onto one tile is the untiled forward pass
    forced = _predict_tiled(
        model,
        images[0],
        preprocess=PRE,
        tile_size=128,
        overlap=32,
        tta=False,
        amp=amp,
        tile_batch=4,
    )
    np.testing.assert_array_equal(forced.mask, single.mask)
    np.testing.assert_array_equal(forced.confidence, single.confidence)
    # many tiles, 8 per pass: the CPU's float32 result, up to rounding (bf16: ~0.3% of pixels
    # are near-ties that bf16 rounding flips, measured on the CPU)
    big = _images(1, 300, 420, seed=3)[0]
    kwargs = {"preprocess": PRE, "tile_size": 128, "tile_overlap": 32}
    tiled = predict(model, big, amp=amp, tile_batch=8, **kwargs)
    reference = predict(cpu_model, big, amp=False, **kwargs)
    agree, diff = (
        (tiled.mask == reference.mask).mean(),
        np.abs(tiled.confidence - reference.confidence),
    )
    if amp is False:
        assert agree > 0.999 and diff.max() < 1e-4
    else:
        assert agree > 0.98 and diff.mean() < 0.01


@pytest.mark.gpu
@cuda
def test_cudnn_benchmark_is_set_on_cuda(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    assert enable_cudnn_benchmark("cuda") is True and torch.backends.cudnn.benchmark
    model = prepare_for_inference(_model(), "cuda")
    image = _images(1, 64, 64)[0]
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    a, b = (predict(model, image, preprocess=PRE, amp=False) for _ in range(2))
    np.testing.assert_array_equal(a.mask, b.mask)
    # the same bits twice, and the right ones: the model's float32 softmax (cuDNN may pick
    # other kernels than the reference's, so up to rounding)
    _assert_is_the_models_own([a], model, [image], device="cuda", atol=1e-4)
