"""DDP parity: one worker with batch 4 and two workers with batch 2 each, on the same global
batch of 4 images, in a real TorchTrainer running the loop's own functions (`build_model`,
`train_epoch`, `validate`, `train_batches`, `SegmentationLoss`, `engine.train_one_epoch`).

The gradients are compared directly (flattened over every parameter, after DDP's all-reduce),
and so are the weight updates of 3 plain SGD steps: SGD's update is proportional to the
gradient, so a gradient summed over ranks instead of averaged (2x with 2 workers) cannot hide
behind an optimizer that normalises the gradient's scale away (as AdamW's first step does).
Every gradient is also checked against in-process single-model gradients, at the same initial
weights, on the exact images each rank got (the ranks' batches come back with the result).

Two training sets of the same 4 images: "equal" has 150 ignored pixels (mask value 200, listed
in classes.json's ignore_values) in every mask, so any 2 + 2 split has the same number of
valid pixels per rank; "unequal" has 40, 150, 400 and 900, so no 2 + 2 split is balanced.

What is equal, and what is not, between 1 worker (batch 4) and 2 workers (batch 2 + 2), with
g_r the single-process gradient on rank r's half and n_r its number of valid pixels:

1. Cross-entropy only, equal valid-pixel counts per rank: the 2-worker all-reduced gradient IS
   the 1-worker gradient, and the weights after 3 SGD steps are the same. CE is a mean over
   the rank's valid pixels and DDP averages the ranks' gradients; with n_A = n_B the mean of
   the per-rank means is the global mean.
2. Cross-entropy only, unequal counts: NOT the 1-worker gradient. DDP gives (g_A + g_B) / 2,
   the 1-worker gradient is the valid-pixel-weighted (n_A g_A + n_B g_B) / (n_A + n_B); both
   identities are asserted.
3. Soft Dice (alone, and in the default loss: `TrainConfig`'s ce_weight and dice_weight), with
   equal or unequal counts: NOT the 1-worker gradient, by design. `soft_dice_loss` sums
   intersections and cardinalities over the rank's local batch only (like nnU-Net's batch Dice
   per GPU), and the mean over ranks of per-rank Dice is not the Dice of the global batch.
   What holds is that the 2-worker gradient is exactly (g_A + g_B) / 2 with the same loss.

Measured here (relative L2 distance of the 2-worker to the 1-worker gradient): case 1
8e-7 (the SGD update after 3 steps 2e-6); case 2 2.8e-2; case 3 Dice alone 1.0e-2 (equal
counts) and 3.1e-2 (unequal), the default CE + Dice 1.5e-3 (equal: Dice's share only) and
2.8e-2 (unequal). Every "same as" check, 1 vs in-process, 2 vs the mean of the halves, is
5e-7 to 1.1e-6. The test asserts the gaps of cases 2 and 3 exceed GAP = 5e-4, so that a switch
to global (all-reduced) loss statistics is noticed here and this docstring updated.

Tolerance: RTOL = 1e-4 on the relative L2 distance ||a - b|| / ||b|| of flattened gradients
and updates, and on |ratio of their norms - 1|. Both sides compute the same float32 quantity
in a different summation order (batch 2 vs 4 convolutions, DDP's bucketed all-reduce, a
different thread count in the driver): measured at most 2e-6, so RTOL leaves a factor of 50
for other CPUs' kernels while sitting 5x below GAP and 10^4 below a sum bug's distance of 1
(norm ratio 2).

GroupNorm (no batch statistics), no augmentation, no crops, no gradient clipping and no
dropout make 1 and 2 workers the same computation in case 1. The validation set has 5 images
(uneven shards over 2 ranks): the same weights must give the same validation metrics.
"""

from __future__ import annotations

import hashlib
import sys

import numpy as np
import pytest
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from PIL import Image
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from jobs.training import datasets
from jobs.training.batches import train_batches
from jobs.training.config import parse_args
from jobs.training.data_checks import gather_training_data
from jobs.training.datasets import TRAIN
from jobs.training.trainer import make_loop_config
from jobs.training.worker_loop import WorkerSetup, build_model, train_epoch, validate
from unet_core.classes import CLASS_MAP_FILENAME, ClassMap
from unet_core.config import IGNORE_INDEX, ModelConfig, PreprocessConfig, TrainConfig
from unet_core.engine import train_one_epoch
from unet_core.losses import SegmentationLoss
from unet_core.precision import autocast_dtype
from unet_core.synthetic import make_synthetic_dataset
from unet_core.transforms import transforms_for_training

pytestmark = pytest.mark.integration

# workers import this module's loop by value: tests/ need not be importable there
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

SIZE = 48
IGNORED_VALUE = 200  # a mask value listed in classes.json's ignore_values: becomes IGNORE_INDEX
UNEQUAL = "train_unequal"  # the same 4 images as TRAIN, with unequal ignored-pixel counts
SGD_STEPS = 3
RTOL = 1e-4  # relative L2 distance of two float32 gradients that differ in summation order
UPDATE_RTOL = 1e-3  # after 3 steps at lr 0.2 each step's summation-order noise compounds
# (1.8e-4 measured on some x86 CPUs); a summed (2x) gradient is off by far more
GAP = 5e-4  # the least distance that counts as "not equal" (measured: 1.5e-3 and more)


# --- data ----------------------------------------------------------------------------------


def make_data(root, *, seed: int, ignored: list[int], prefix: str = "synth") -> None:
    """Synthetic pairs whose i-th mask has exactly ignored[i] scattered ignored pixels."""
    class_map = make_synthetic_dataset(
        root, num_images=len(ignored), size=SIZE, seed=seed, prefix=prefix
    )
    ClassMap(class_map.classes, ignore_values=(IGNORED_VALUE,)).save(root / CLASS_MAP_FILENAME)
    rng = np.random.default_rng(seed)
    for count, path in zip(ignored, sorted((root / "masks").glob("*.png")), strict=True):
        mask = np.array(Image.open(path))
        mask.reshape(-1)[rng.choice(mask.size, size=count, replace=False)] = IGNORED_VALUE
        Image.fromarray(mask).save(path)


# --- gradients -----------------------------------------------------------------------------


def flat_grad(model: torch.nn.Module) -> np.ndarray:
    return torch.cat([p.grad.detach().reshape(-1) for p in model.parameters()]).double().numpy()


def flat_weights(model: torch.nn.Module) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double().numpy()


def step_gradient(model, loss_fn, batch, device) -> np.ndarray:
    """The product's training step on one batch with a zero learning rate: the gradient (after
    DDP's all-reduce when `model` is DDP-wrapped), the weights unchanged."""
    frozen = torch.optim.SGD(model.parameters(), lr=0.0)
    amp = autocast_dtype(device, False, training=True)  # fp32: parity to 1e-4 (as --amp off)
    train_one_epoch(model, [batch], frozen, loss_fn, device=device, amp_dtype=amp)
    return flat_grad(model)


def losses(num_classes: int, cfg: TrainConfig) -> dict[str, SegmentationLoss]:
    return {
        "ce": SegmentationLoss(num_classes, ce_weight=cfg.ce_weight, dice_weight=0.0),
        "dice": SegmentationLoss(num_classes, ce_weight=0.0, dice_weight=cfg.dice_weight),
        "default": SegmentationLoss(
            num_classes, ce_weight=cfg.ce_weight, dice_weight=cfg.dice_weight
        ),
    }


# --- the worker loop -----------------------------------------------------------------------


def shard_batch(name: str, setup: WorkerSetup, epoch: int):
    """This rank's whole shard of `name` as one batch, as `train_epoch` reads it (no
    augmentation, whole images)."""
    batches = list(
        train_batches(
            ray.train.get_dataset_shard(name),
            batch_size=setup.cfg.batch_size,
            transform=transforms_for_training(TrainConfig(crop_size=0, augment=False)),
            preprocess=setup.preprocess,
            seed=setup.cfg.seed,
            epoch=epoch,
            rank=setup.rank,
        )
    )
    assert len(batches) == 1, f"{name}: {len(batches)} batches on rank {setup.rank}"
    return batches[0]


def gather(value, setup: WorkerSetup) -> list:
    """Every rank's `value`, in rank order (on every rank)."""
    if setup.world_size == 1:
        return [value]
    out = [None] * setup.world_size
    dist.all_gather_object(out, value)
    return out


def parity_loop(config: dict) -> dict:
    setup = WorkerSetup.from_config(config)
    cfg, device = setup.cfg, setup.device
    model = ray.train.torch.prepare_model(build_model(setup))  # DDP with 2 workers
    loss = losses(setup.model_config.num_classes, cfg)
    out: dict = {"world_size": setup.world_size}
    out["before"] = validate(model, loss["default"], setup, batch_size=3)

    # both sets: this rank's batch, and each loss's gradient on it at the initial weights
    for set_name, shard_name in (("equal", TRAIN), ("unequal", UNEQUAL)):
        x, y = shard_batch(shard_name, setup, epoch=1)
        out[f"{set_name}_batches"] = gather((x.numpy(), y.numpy()), setup)
        for name, fn in loss.items():
            out[f"{set_name}_grad_{name}"] = step_gradient(model, fn, (x, y), device)

    # plain SGD (constant lr) through the loop's own train_epoch; after the first step .grad
    # still holds the (all-reduced) gradient at the initial weights
    initial = flat_weights(model)
    sgd = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    constant = torch.optim.lr_scheduler.LambdaLR(sgd, lambda step: 1.0)
    out["steps"] = []
    for epoch in range(1, SGD_STEPS + 1):
        out["steps"].append(train_epoch(model, sgd, constant, loss["ce"], setup, epoch=epoch))
        if epoch == 1:
            out["first_step_grad"] = flat_grad(model)
    out["update"] = flat_weights(model) - initial
    out["after"] = validate(model, loss["default"], setup, batch_size=3)
    ray.train.report({"done": 1.0})  # every rank, the same number of times
    return out  # rank 0's is trainer.fit().return_value


def run_parity(training_sets, loop_config: dict, workers: int, batch: int, storage) -> dict:
    config = {**loop_config, "train": {**loop_config["train"], "batch_size": batch}}
    equal, unequal = training_sets
    data = datasets.build_train_val(equal, seed=0, cache=False)
    data[UNEQUAL] = datasets.build_train_val(unequal, seed=0, cache=False)[TRAIN]
    trainer = TorchTrainer(
        parity_loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=f"parity-{workers}", storage_path=str(storage)),
        datasets=data,
        dataset_config=datasets.ExactValidationDataConfig(),  # train sets: equal shards
    )
    result = trainer.fit().return_value
    assert result["world_size"] == workers
    return result


# --- driver-side checks --------------------------------------------------------------------


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def norm_ratio(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a) / np.linalg.norm(b))


def assert_same(a: np.ndarray, b: np.ndarray, what: str, rtol: float = RTOL) -> None:
    """a == b to float32 summation noise; a summed (2x) gradient fails both checks."""
    assert norm_ratio(a, b) == pytest.approx(1.0, abs=rtol), f"{what}: ||a||/||b|| != 1"
    assert rel(a, b) < rtol, f"{what}: relative distance {rel(a, b):.2e}"


def image_ids(batches) -> list[str]:
    """Content hashes of every image/mask pair in the rank batches, sorted."""
    return sorted(
        hashlib.sha1(x[i].tobytes() + y[i].tobytes()).hexdigest()
        for x, y in batches
        for i in range(len(x))
    )


def valid_pixels(batches) -> list[int]:
    return [int((y != IGNORE_INDEX).sum()) for _, y in batches]


def reference_gradients(loop_config: dict, batches) -> dict[str, list[np.ndarray]]:
    """In-process single-model gradients of each loss on each batch, at the initial weights."""
    setup = WorkerSetup(
        cfg=TrainConfig.from_dict(loop_config["train"]),
        model_config=ModelConfig.from_dict(loop_config["model"]),
        preprocess=PreprocessConfig.from_dict(loop_config["preprocess"]),
        class_map=ClassMap.from_dict(loop_config["class_map"]),
        rank=0,
        world_size=1,
        device=torch.device("cpu"),
        train_rows=int(loop_config["train_rows"]),
    )
    model = build_model(setup)  # the same seeded initial weights as every rank
    out: dict[str, list[np.ndarray]] = {}
    for name, fn in losses(setup.model_config.num_classes, setup.cfg).items():
        out[name] = [
            step_gradient(model, fn, (torch.tensor(x), torch.tensor(y)), setup.device)
            for x, y in batches
        ]
    return out


def test_one_and_two_workers_agree(ray_local, tmp_path):
    train_root, unequal_root, val_root = tmp_path / "train", tmp_path / "unequal", tmp_path / "val"
    make_data(train_root, seed=1, ignored=[150] * 4)  # the same valid-pixel count on each rank
    make_data(unequal_root, seed=1, ignored=[40, 150, 400, 900])  # no 2 + 2 split is balanced
    make_data(val_root, seed=2, ignored=[0, 60, 120, 180, 240], prefix="val")  # 5: uneven shards
    training_sets = [
        gather_training_data(str(root), val_data=str(val_root), val_fraction=0.0, seed=0)[0]
        for root in (train_root, unequal_root)
    ]
    cfg = parse_args(
        ["--data", str(train_root), "--base-width", "8", "--depth", "2", "--norm", "group",
         "--no-augment", "--crop-size", "0", "--lr", "0.2", "--max-grad-norm", "0",
         "--epochs", str(SGD_STEPS), "--amp", "off"]
    )  # fmt: skip
    job_weights = (cfg.train.ce_weight, cfg.train.dice_weight)
    assert job_weights == (TrainConfig().ce_weight, TrainConfig().dice_weight)  # the defaults
    assert cfg.train.dice_weight > 0 and cfg.model.dropout == 0
    loop_config = make_loop_config(cfg, training_sets[0], tracking_uri="", run_id="")

    one = run_parity(training_sets, loop_config, workers=1, batch=4, storage=tmp_path / "runs")
    two = run_parity(training_sets, loop_config, workers=2, batch=2, storage=tmp_path / "runs")

    # the same global batch of 4 distinct images in both set-ups, 2 per rank with 2 workers
    for key in ("equal_batches", "unequal_batches"):
        assert [len(x) for x, _ in one[key]] == [4] and [len(x) for x, _ in two[key]] == [2, 2]
        assert image_ids(one[key]) == image_ids(two[key]), key
        assert len(set(image_ids(one[key]))) == 4, key
    equal_counts = valid_pixels(two["equal_batches"])
    unequal_counts = valid_pixels(two["unequal_batches"])
    assert equal_counts[0] == equal_counts[1] == 2 * (SIZE * SIZE - 150)
    assert unequal_counts[0] != unequal_counts[1]
    assert sum(unequal_counts) == valid_pixels(one["unequal_batches"])[0]

    # the same weights: identical confusion-matrix metrics over every validation image
    assert one["before"]["val_images"] == two["before"]["val_images"] == 5
    for key in ("val_miou", "val_pixel_accuracy", "val_mean_dice"):
        assert one["before"][key] == two["before"][key], key
    assert one["before"]["val_loss"] == pytest.approx(two["before"]["val_loss"], rel=1e-5)

    # every gradient against in-process single-model references at the same initial weights:
    # halves[loss][r] on rank r's half of the 2-worker batch, whole[loss][0] on all 4 images
    for set_name in ("equal", "unequal"):
        halves = reference_gradients(loop_config, two[f"{set_name}_batches"])
        whole = reference_gradients(loop_config, one[f"{set_name}_batches"])
        for name in ("ce", "dice", "default"):
            key = f"{set_name}_grad_{name}"
            g_a, g_b = halves[name]
            # 1 worker is a plain process; 2 workers average the per-rank gradients (not a sum)
            assert_same(one[key], whole[name][0], f"{key}: 1 worker vs in-process")
            assert_same(two[key], (g_a + g_b) / 2, f"{key}: 2 workers vs mean of the halves")
            if set_name == "equal" and name == "ce":
                # (1) CE, equal valid-pixel counts per rank: the 1-worker gradient itself
                assert_same(two[key], one[key], f"{key}: 2 workers vs 1 worker")
            else:
                # (2), (3) not the global-batch gradient, by design (see the docstring)
                gap = rel(two[key], one[key])
                assert gap > GAP, f"{key}: 2-worker gradient unexpectedly global ({gap:.2e})"
        if set_name == "unequal":
            # (2) CE: the global gradient is the valid-pixel-weighted mean of the halves'
            (g_a, g_b), (n_a, n_b) = halves["ce"], unequal_counts
            weighted = (n_a * g_a + n_b * g_b) / (n_a + n_b)
            assert_same(one["unequal_grad_ce"], weighted, "CE: weighted mean of the halves")

    # (1) SGD through the loop's train_epoch: its first gradient is the one above, and the
    # updates of 3 steps (proportional to the gradients) are those of 1 worker
    for run in (one, two):
        assert_same(run["first_step_grad"], run["equal_grad_ce"], "train_epoch's gradient")
    assert_same(
        two["update"], one["update"], f"weight update after {SGD_STEPS} SGD steps", UPDATE_RTOL
    )
    for a, b in zip(one["steps"], two["steps"], strict=True):
        assert a["train_images"] == b["train_images"] == 4
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    assert one["steps"][-1]["train_loss"] < one["steps"][0]["train_loss"]  # the steps descend
    assert one["after"]["val_loss"] == pytest.approx(two["after"]["val_loss"], rel=1e-4)
    assert one["after"]["val_pixel_accuracy"] == pytest.approx(
        two["after"]["val_pixel_accuracy"], abs=1e-3
    )
    assert one["after"]["val_loss"] != one["before"]["val_loss"]  # the steps changed the weights
