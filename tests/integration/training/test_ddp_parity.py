"""DDP parity: one worker with batch 4 and two workers with batch 2 each (the same global batch)
see the same validation metrics for the same weights and the same loss after one step.

Runs the loop's own functions (build_model, train_epoch, validate) in a real TorchTrainer.
GroupNorm (no batch statistics), no augmentation and a cross-entropy-only loss (a mean over
pixels, which averages across workers exactly as DDP averages gradients) make the two set-ups
mathematically identical; the tolerance covers float summation order.
"""

from __future__ import annotations

import sys

import pytest
import ray
import ray.train
import ray.train.torch
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from jobs.training import datasets
from jobs.training.config import parse_args
from jobs.training.data_checks import plan_data
from jobs.training.worker_loop import (
    WorkerSetup,
    build_model,
    make_loop_config,
    train_epoch,
    validate,
)
from unet_core.engine import make_optimizer, make_scheduler
from unet_core.losses import SegmentationLoss
from unet_core.synthetic import make_synthetic_dataset

pytestmark = pytest.mark.integration

# workers import this module's loop by value: tests/ need not be importable there
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def parity_loop(config: dict) -> dict:
    setup = WorkerSetup.from_config(config)
    model = ray.train.torch.prepare_model(build_model(setup))
    optimizer = make_optimizer(model, setup.cfg)
    scheduler = make_scheduler(optimizer, setup.cfg, steps_per_epoch=1)
    loss_fn = SegmentationLoss(setup.model_config.num_classes, ce_weight=1.0, dice_weight=0.0)
    before = validate(model, loss_fn, setup, batch_size=3)
    step = train_epoch(model, optimizer, scheduler, loss_fn, setup, epoch=1)
    after = validate(model, loss_fn, setup, batch_size=3)
    ray.train.report({"done": 1.0})  # every rank, the same number of times
    return {"before": before, "step": step, "after": after}


def run_parity(plan, loop_config: dict, workers: int, batch: int, storage) -> dict:
    config = {**loop_config, "train": {**loop_config["train"], "batch_size": batch}}
    trainer = TorchTrainer(
        parity_loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=f"parity-{workers}", storage_path=str(storage)),
        datasets=datasets.build_train_val(plan, seed=0, cache=False),
        dataset_config=datasets.ExactValidationDataConfig(),
    )
    return trainer.fit().return_value


def test_one_and_two_workers_agree(ray_local, tmp_path):
    train_root, val_root = tmp_path / "train", tmp_path / "val"
    make_synthetic_dataset(train_root, num_images=4, size=48, seed=1)
    make_synthetic_dataset(val_root, num_images=5, size=48, seed=2)  # 5: uneven val shards
    plan, _ = plan_data(str(train_root), val_data=str(val_root), val_fraction=0.0, seed=0)
    cfg = parse_args(
        ["--data", str(train_root), "--base-width", "8", "--depth", "2", "--norm", "group",
         "--no-augment", "--crop-size", "0", "--lr", "1e-2", "--warmup-epochs", "0",
         "--dice-weight", "0", "--epochs", "1"]
    )  # fmt: skip
    loop_config = make_loop_config(cfg, plan, tracking_uri="", run_id="")

    one = run_parity(plan, loop_config, workers=1, batch=4, storage=tmp_path / "runs")
    two = run_parity(plan, loop_config, workers=2, batch=2, storage=tmp_path / "runs")

    # the same weights: identical confusion-matrix metrics over every validation image
    assert one["before"]["val_images"] == two["before"]["val_images"] == 5
    for key in ("val_miou", "val_pixel_accuracy", "val_mean_dice"):
        assert one["before"][key] == two["before"][key], key
    assert one["before"]["val_loss"] == pytest.approx(two["before"]["val_loss"], rel=1e-5)
    # one step on the same global batch of 4
    assert one["step"]["train_images"] == two["step"]["train_images"] == 4
    assert one["step"]["train_loss"] == pytest.approx(two["step"]["train_loss"], rel=1e-5)
    assert one["after"]["val_loss"] == pytest.approx(two["after"]["val_loss"], rel=1e-4)
    assert one["after"]["val_pixel_accuracy"] == pytest.approx(
        two["after"]["val_pixel_accuracy"], abs=1e-3
    )
    assert one["after"]["val_loss"] != one["before"]["val_loss"]  # the step changed the weights
