"""Helpers for the segment/evaluate tests: tiny checkpoints, registered models, job runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tests.support import REPO_ROOT  # noqa: F401  (the segment tests run jobs from it)
from unet_core.checkpoint import load_checkpoint, save_checkpoint
from unet_core.classes import ClassMap
from unet_core.config import ModelConfig, PreprocessConfig
from unet_core.data import read_image
from unet_core.model import UNet
from unet_core.predict import predict, prepare_for_inference

BAD = ("corrupt.png", "truncated.jpg", "empty.png", "text.png")
"""Files of the `hostile` folder (conftest) that cannot be read as images."""


def make_checkpoint(
    path: Path,
    class_map: ClassMap,
    *,
    base_width: int = 4,
    depth: int = 2,
    channels: int = 3,
    seed: int = 0,
) -> Path:
    """A small randomly initialised UNet checkpoint (deterministic for a seed)."""
    torch.manual_seed(seed)
    config = ModelConfig(
        in_channels=channels, num_classes=class_map.num_classes, base_width=base_width, depth=depth
    )
    save_checkpoint(
        path,
        UNet.from_config(config),
        model_config=config,
        class_map=class_map,
        preprocess=PreprocessConfig.for_channels(channels),
    )
    return path


def constant_checkpoint(path: Path, class_map: ClassMap, *, predict_class: int) -> Path:
    """A UNet whose prediction is always ``predict_class``: the last conv's bias says so."""
    torch.manual_seed(0)
    config = ModelConfig(in_channels=3, num_classes=class_map.num_classes, base_width=4, depth=2)
    model = UNet.from_config(config)
    last = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(-10.0)
        last.bias[predict_class] = 10.0
    save_checkpoint(
        path, model, model_config=config, class_map=class_map, preprocess=PreprocessConfig()
    )
    return path


def register_checkpoint(
    checkpoint: Path, artifact_root: Path, *, name: str = "unet", alias: str = "champion"
) -> str:
    """Log and register the checkpoint with the product's own registry code (what the end of
    a training run calls), in a run of its own, and point ``alias`` at it. Returns the
    version. Uses the tracking URI already set (the ``mlflow_uri`` fixture)."""
    import mlflow

    from jobs.training.registry import log_and_register

    experiment = "segment-tests"
    if mlflow.get_experiment_by_name(experiment) is None:
        mlflow.create_experiment(experiment, artifact_location=artifact_root.as_uri())
    mlflow.set_experiment(experiment)
    with mlflow.start_run() as run:
        registration = log_and_register(
            run_id=run.info.run_id,
            checkpoint_path=checkpoint,
            name=name,
            alias=alias,
            val_miou=1.0,
            epoch=1,
            force_alias=True,
        )
    assert registration.alias_set, registration.reason
    return registration.version


def expected_masks(
    checkpoint: Path, image_paths: list[Path], **kwargs: Any
) -> dict[str, np.ndarray]:
    """unet_core.predict.predict on each image: what the job must reproduce exactly."""
    loaded = load_checkpoint(checkpoint)
    model = prepare_for_inference(loaded.model, "cpu")
    channels = loaded.preprocess.channels
    return {
        p.name: predict(
            model, read_image(p, channels=channels), preprocess=loaded.preprocess, **kwargs
        ).mask
        for p in image_paths
    }


def run_main(main, argv: list[str], capsys) -> tuple[int, dict[str, Any]]:
    """Run a job's main() in-process; (exit code, the JSON object on the last stdout line)."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert lines, "the job printed nothing on stdout"
    return code, json.loads(lines[-1])


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """relative path -> (inode, mtime_ns) of every file under root (hidden ones included)."""
    return {
        p.relative_to(root).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def assert_throughput(summary: dict[str, Any], processed: int) -> None:
    """The summary's throughput is what its own counts and timings say: ``processed`` inputs
    (ok + failed of this run) over ``pipeline_seconds`` (rounded there to 3 decimals, hence the
    bounds), and the pipeline is part of the job's wall time ``seconds``."""
    rate, pipeline, total = (
        summary["images_per_second"],
        summary["pipeline_seconds"],
        summary["seconds"],
    )
    if processed == 0:  # nothing to do: no pipeline ran
        assert (rate, pipeline) == (0.0, 0.0), summary
        assert total > 0, summary
        return
    assert 0 < pipeline <= total, summary
    slack = 5e-4 + 1e-9  # round(x, 3) is within 0.0005 of x
    low, high = processed / (pipeline + slack), processed / max(pipeline - slack, 1e-9)
    assert low <= rate <= high, (
        f"images_per_second {rate} is not {processed} inputs / {pipeline} s",
        summary,
    )
