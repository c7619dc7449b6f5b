"""Images as they come, end to end: generated sets of 4-band uint16 TIFF, 12-bit PNG and
float32 TIFF train (tiny, CPU), segment and evaluate; the masks are `unet_core.predict`'s on the
same arrays, the saved preprocessing is the statistics of the training sample, and the pyfunc
and an ONNX export give the same masks."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from PIL import Image

from jobs import evaluate, export, segment, train
from tests.integration.inference.helpers import run_main
from unet_core.data import pair_images_and_masks, read_mask, split_pairs
from unet_core.metrics import ConfusionMatrix
from unet_core.preprocessing import channel_statistics, fit_preprocessing, read_array
from unet_core.synthetic_kinds import BAND_NAMES, make_image_kind_dataset

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TINY = ["--base-width", "8", "--depth", "2", "--norm", "group", "--batch-size", "4"]
EXPECTED = {  # kind: (channels, scheme, dtype)
    "uint16_tiff4": (4, "clip_zscore", np.uint16),
    "png12": (1, "clip_zscore", np.uint16),
    "float32_tiff": (1, "clip_zscore", np.float32),
}


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow keeps artifacts under ./mlruns
    return tmp_path


def _checkpoint_of(model_uri: str):
    from jobs.common.model_source import fetch_model

    return fetch_model(model_uri).loaded


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_a_kind_trains_segments_and_evaluates(kind, ray_local, mlflow_uri, in_tmp, capsys):
    from unet_core.predict import predict, prepare_for_inference

    root = in_tmp / kind
    make_image_kind_dataset(root, kind=kind, num_images=16, size=64, seed=1)
    channels, scheme, dtype = EXPECTED[kind]
    code, summary = run_main(
        train.main,
        ["--data", root, "--epochs", "2", "--lr", "1e-2", "--num-workers", "1",
         "--run-name", f"kinds-{kind}", "--storage-path", in_tmp / "runs", "--amp", "off",
         "--min-miou", "0", "--register-as", f"unet-{kind.replace('_', '-')}", *TINY],
        capsys,
    )  # fmt: skip
    assert code == 0, summary
    loaded = _checkpoint_of(summary["model_uri"])
    pre = loaded.preprocess
    assert (pre.channels, pre.scheme, loaded.model_config.in_channels) == (
        channels,
        scheme,
        channels,
    )
    assert pre.names == BAND_NAMES.get(kind, pre.names)

    # the saved preprocessing: the statistics of the training sample (seed 0, all 16 - val)
    train_pairs, _ = split_pairs(pair_images_and_masks(root), val_fraction=0.2, seed=0)
    sample = random.Random(0).sample(sorted(train_pairs, key=lambda p: p.key), len(train_pairs))
    arrays = [read_array((root / p.image).read_bytes(), source=p.image) for p in sample]
    assert {a.dtype for a in arrays} == {np.dtype(dtype)}
    want = fit_preprocessing(channel_statistics(arrays), channel_names=BAND_NAMES.get(kind, ()))
    assert pre == want

    # segment: one mask per image, equal to unet_core.predict on the same arrays
    out = in_tmp / "out"
    code, seg = run_main(
        segment.main,
        ["--input", root / "images", "--output", out, "--model", summary["model_uri"],
         "--batch-size", 1, "--amp", "off", "--overlays", "--progress-seconds", 0],
        capsys,
    )  # fmt: skip
    assert code == 0 and seg["ok"] == 16 and seg["failed"] == 0, seg
    model = prepare_for_inference(loaded.model, "cpu")
    images = sorted((root / "images").iterdir())
    confusion = ConfusionMatrix(loaded.class_map.num_classes)
    for path in images:
        image = read_array(path.read_bytes(), source=path.name)
        pred = predict(model, image, preprocess=pre, amp=False)  # fp32 passes, as the job's
        got = np.asarray(Image.open(out / "masks" / f"{path.stem}.png"))
        # equal but for near ties (fp32 GroupNorm sums round with the actor's thread count)
        differ = got != pred.mask
        assert differ.mean() < 0.01, path.name
        assert (pred.confidence[differ] < 0.51).all(), (path.name, pred.confidence[differ])
        confusion.update(got, read_mask(root / "masks" / f"{path.stem}.png", loaded.class_map))
    assert len(list((out / "overlays").glob("*.jpg"))) == 16

    # evaluate: every pair scored against its mask
    code, report = run_main(
        evaluate.main,
        ["--model", summary["model_uri"], "--data", root, "--scores-file",
         in_tmp / "scores.parquet", "--amp", "off"],
        capsys,
    )  # fmt: skip
    assert code == 0, report
    assert report["mean_iou"] == pytest.approx(confusion.mean_iou())  # predict's masks scored

    if kind != "uint16_tiff4":
        return
    # the pyfunc on arrays and on encoded bytes; an ONNX export on the normalised arrays
    import mlflow
    import pandas as pd

    pyfunc = mlflow.pyfunc.load_model(summary["model_uri"])
    for path in images[:3]:
        image = read_array(path.read_bytes(), source=path.name)
        expected = predict(model, image, preprocess=pre).mask  # both in this process
        np.testing.assert_array_equal(pyfunc.predict(image), expected)
        frame = pyfunc.predict(pd.DataFrame({"image": [path.read_bytes()]}))
        np.testing.assert_array_equal(frame["mask"][0], expected)
    pytest.importorskip("onnxruntime")
    import onnxruntime

    from unet_core.transforms import normalize_batch

    onnx_file = in_tmp / "model.onnx"
    code, exported = run_main(
        export.main,
        ["--model", summary["model_uri"], "--format", "onnx", "--output", onnx_file],
        capsys,
    )
    assert code == 0 and exported["passed"], exported
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["preprocess"]) == pre.to_dict()
    import torch

    batch = np.stack([read_array(p.read_bytes(), source=p.name) for p in images[:4]])
    x = normalize_batch(torch.from_numpy(batch), pre).contiguous().numpy()
    logits = session.run(["logits"], {"input": x})[0]
    masks = np.stack([predict(model, b, preprocess=pre, amp=False).mask for b in batch])
    assert (logits.argmax(axis=1) == masks).mean() > 0.999  # near ties may round apart
