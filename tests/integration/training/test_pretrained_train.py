"""train --encoder resnet18 --encoder-weights FILE end to end on a local Ray with 2 DDP workers:
the encoder starts from the file, stays frozen (weights and BatchNorm statistics) for
--freeze-encoder-epochs and learns after; ImageNet's normalisation, the params, and the
registered model segments. The file is saved from a seeded model (no download)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from jobs import segment
from jobs.train import main
from unet_core.checkpoint import load_checkpoint
from unet_core.config import ModelConfig
from unet_core.model import build_model
from unet_core.synthetic import make_synthetic_dataset

pytestmark = pytest.mark.integration


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def encoder_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.encoder.state_dict().items()}


def test_pretrained_encoder_frozen_then_learning_and_segments(
    ray_local, mlflow_uri, tmp_path, monkeypatch, capsys
):
    import hashlib

    from unet_core.encoders import IMAGENET_MEAN, IMAGENET_STD

    monkeypatch.chdir(tmp_path)
    root = tmp_path / "set"
    make_synthetic_dataset(root, num_images=8, size=32, num_classes=2, seed=0)
    torch.manual_seed(123)  # weights no run would start from: seed 0 is the run's own
    donor = build_model(ModelConfig(num_classes=2, encoder="resnet18", base_width=4))
    weights = tmp_path / "resnet18-seeded.pth"
    torch.save(encoder_of(donor), weights)
    runs = tmp_path / "runs"
    code = main(
        ["--data", str(root), "--encoder", "resnet18", "--encoder-weights", str(weights),
         "--base-width", "4", "--batch-size", "2", "--epochs", "2", "--lr", "1e-2",
         "--freeze-encoder-epochs", "1", "--num-workers", "2", "--keep-checkpoints", "2",
         "--run-name", "pretrained", "--storage-path", str(runs), "--amp", "off"]
    )  # fmt: skip
    summary = last_json(capsys)
    assert code == 0, summary

    by_epoch = {}
    for path in runs.glob("pretrained/checkpoint_*/unet.pt"):
        loaded = load_checkpoint(path)
        by_epoch[loaded.extra["epoch"]] = loaded
    assert sorted(by_epoch) == [1, 2]
    start = encoder_of(donor)
    first, second = encoder_of(by_epoch[1].model), encoder_of(by_epoch[2].model)
    for key, value in start.items():  # frozen: the file's weights and BatchNorm statistics
        assert torch.equal(first[key], value), key
    assert any(not torch.equal(second[k], start[k]) for k in start)  # then it learns
    torch.manual_seed(0)  # the run's --seed: its initial head
    fresh = build_model(by_epoch[1].model_config).head.weight
    assert not torch.equal(by_epoch[1].model.head.weight, fresh)  # the decoder learnt at once

    preprocess = by_epoch[2].preprocess
    assert preprocess.scheme == "scale_zscore"
    assert preprocess.mean == pytest.approx(IMAGENET_MEAN)
    assert preprocess.std == pytest.approx(IMAGENET_STD)
    params = MlflowClient().get_run(summary["run_id"]).data.params
    assert params["encoder"] == "resnet18"
    assert params["encoder_weights"] == weights.name
    assert params["encoder_weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert params["encoder_lr_scale"] == "0.1"

    out = tmp_path / "out"
    code = segment.main(
        ["--input", str(root / "images"), "--output", str(out), "--model", summary["model_uri"],
         "--batch-size", "4", "--progress-seconds", "0"]
    )  # fmt: skip
    segmented = last_json(capsys)
    assert code == 0 and segmented["ok"] == 8, segmented
    mask = np.asarray(Image.open(next((out / "masks").glob("*.png"))))
    assert mask.shape == (32, 32)


def test_missing_weights_file_refused_before_any_work(ray_local, mlflow_uri, tmp_path, capsys):
    code = main(
        ["--data", str(tmp_path / "nowhere"), "--encoder", "resnet18",
         "--encoder-weights", str(tmp_path / "missing.pth"), "--run-name", "refused"]
    )  # fmt: skip
    out = capsys.readouterr()
    assert code == 2
    assert "missing.pth" in out.err and "--encoder-weights" in out.err
    assert not Path(tmp_path / "nowhere").exists()
