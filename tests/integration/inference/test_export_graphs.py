"""Exported graphs that take what users have: every encoder's ONNX and pt2 file takes any H x W
(1 x 1, odd, non-square, below the model's multiple) with the eager model's logits (an ensemble
of two members too), and the
uint8-mask graph takes uint8 images and gives `unet_core.predict`'s class values, in
onnxruntime and torch.export.load; a model of 16-bit data is refused for it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from jobs.export import main
from jobs.exporting import formats
from jobs.exporting.graph import SPECS, build_graph, padding_multiple
from tests.integration.inference.helpers import run_main
from tests.integration.inference.test_export import need_onnx
from tests.support import missing
from tests.unit.exporting.test_graph import WIDE_DATA
from unet_core.checkpoint import LoadedModel, load_checkpoint, save_checkpoint
from unet_core.classes import ClassMap
from unet_core.config import ModelConfig, PreprocessConfig
from unet_core.predict import predict

pytestmark = pytest.mark.integration

SIZES = [(1, 1), (7, 13), (31, 64), (64, 64)]
ENCODERS = ("unet", "resnet18", "efficientnet-lite0")
CLASSES = ClassMap.from_names(["background", "cell", "edge"], values=[0, 128, 255])


def random_model(encoder: str, *, seed: int = 3) -> torch.nn.Module:
    """A tiny model of ``encoder`` (width 4, random weights) whose norm layers are not the
    identity, as after training."""
    try:
        from unet_core.model import build_model
    except ImportError:
        if encoder != "unet":
            missing(f"unet_core.model.build_model (encoders) is not in this tree: {encoder}")
        from unet_core.model import UNet

        build_model = UNet.from_config
    fields = {} if encoder == "unet" else {"encoder": encoder}
    config = ModelConfig(
        in_channels=3, num_classes=CLASSES.num_classes, base_width=4, depth=2, **fields
    )
    torch.manual_seed(seed)
    model = build_model(config)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def exported(loaded: LoadedModel, fmt: str, path: Path, graph: str = "logits"):
    """The file of ``graph`` written as ``fmt`` and its runner (what the job does, unchecked)."""
    module = build_graph(loaded, loaded.model, graph)
    spec = SPECS[graph]
    m = padding_multiple(loaded.model)
    sample = torch.randint(0, 256, (2, 2 * m + 3, 3 * m + 1, 3), dtype=torch.uint8)
    if graph == "logits":
        sample = sample.permute(0, 3, 1, 2).float().contiguous() / 64 - 2
    program = formats.export_program(module, sample, spec)
    meta = formats.metadata(loaded, {}, graph)
    if fmt == "onnx":
        formats.write_onnx(program, path, meta)
    else:
        formats.write_pt2(program, path, meta)
    return formats.RUNNERS[fmt](path)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_every_encoder_exports_for_any_size(encoder, tmp_path):
    need_onnx()
    model = random_model(encoder)
    loaded = LoadedModel(
        model=model,
        model_config=model.config,
        class_map=CLASSES,
        preprocess=PreprocessConfig.for_channels(3),
    )
    # pt2 holds the same ATen graph for every encoder: the plain UNet's is enough there
    fmts = ("onnx", "pt2") if encoder == "unet" else ("onnx",)
    runners = {fmt: exported(loaded, fmt, tmp_path / f"m.{fmt}") for fmt in fmts}
    rng = torch.Generator().manual_seed(4)
    for i, (h, w) in enumerate(SIZES):
        x = torch.randn(2 if i == 1 else 1, 3, h, w, generator=rng)
        with torch.no_grad():
            expected = model(x).numpy()
        for fmt, run in runners.items():
            got = run(x.numpy())
            assert got.shape == expected.shape, (fmt, h, w)
            assert np.abs(got - expected).max() <= 1e-4, (fmt, h, w)


def test_an_ensemble_of_two_members_exports_for_any_size(tmp_path):
    """Members of different multiples (unet depth 2, resnet18: 4 and 32), each padded as it is
    in eager mode; ONNX in onnxruntime equals the eager ensemble."""
    need_onnx()
    from unet_core.ensemble import Ensemble

    ensemble = Ensemble([random_model("unet"), random_model("resnet18", seed=4)]).eval()
    loaded = LoadedModel(
        model=ensemble,
        model_config=ensemble.members[0].config,
        class_map=CLASSES,
        preprocess=PreprocessConfig.for_channels(3),
        members=2,
    )
    run = exported(loaded, "onnx", tmp_path / "ensemble.onnx")
    rng = torch.Generator().manual_seed(5)
    for h, w in SIZES:
        x = torch.randn(1, 3, h, w, generator=rng)
        with torch.no_grad():
            expected = ensemble(x).numpy()
        assert np.abs(run(x.numpy()) - expected).max() <= 1e-4, (h, w)


def checkpoint(path: Path, preprocess: PreprocessConfig) -> Path:
    model = random_model("unet")
    save_checkpoint(
        path, model, model_config=model.config, class_map=CLASSES, preprocess=preprocess
    )
    return path


SCALE_ZSCORE = PreprocessConfig(
    channels=3, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25), scheme="scale_zscore"
)


@pytest.mark.parametrize(
    "fmt,preprocess",
    [("onnx", SCALE_ZSCORE), ("pt2", PreprocessConfig.for_channels(3))],
    ids=["onnx-scale_zscore", "pt2-legacy_uint8"],
)
def test_uint8_mask_graph_gives_predicts_class_values(fmt, preprocess, tmp_path, capsys):
    if fmt == "onnx":
        need_onnx()
    ckpt = checkpoint(tmp_path / "unet.pt", preprocess)
    out = tmp_path / f"mask.{fmt}"
    argv = ["--model", ckpt, "--format", fmt, "--output", out, "--graph", "uint8-mask"]
    code, summary = run_main(main, argv, capsys)
    assert code == 0 and summary["passed"], summary
    assert summary["graph"] == "uint8-mask" and summary["output_name"] == "mask"
    assert summary["input"]["shape"] == ["batch", "height", "width", 3]
    assert (summary["input"]["dtype"], summary["output_dtype"]) == ("uint8", "uint8")
    assert min(c["mask_agreement"] for c in summary["checks"]) == 1.0
    meta = formats.read_metadata(out, fmt)
    assert (meta["graph"], meta["input_name"], meta["output_name"]) == (
        "uint8-mask",
        "image",
        "mask",
    )

    run = formats.RUNNERS[fmt](out)
    loaded = load_checkpoint(ckpt)
    rng = np.random.default_rng(6)
    for h, w in SIZES:
        images = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
        masks = run(images)
        assert masks.dtype == np.uint8 and masks.shape == (2, h, w)
        for image, mask in zip(images, masks, strict=True):
            pred = predict(
                loaded.model, image, preprocess=loaded.preprocess, tile_size=None, amp=False
            )
            assert np.array_equal(mask, np.asarray(CLASSES.values)[pred.mask]), (h, w)


def test_a_model_of_16_bit_data_is_refused_for_the_uint8_mask_graph(tmp_path, capsys):
    ckpt = checkpoint(tmp_path / "wide.pt", WIDE_DATA)
    out = tmp_path / "mask.pt2"
    argv = ["--model", ckpt, "--format", "pt2", "--output", out, "--graph", "uint8-mask"]
    code, summary = run_main(main, argv, capsys)
    assert (code, summary["kind"]) == (2, "usage"), summary
    assert "clip_zscore" in summary["error"] and "--graph logits" in summary["error"]
    assert not out.exists()
