"""The single-process loop: the reference every distributed run is compared with."""

import torch

from unet_core.config import ModelConfig, PreprocessConfig, TrainConfig
from unet_core.engine import fit, make_optimizer, make_scheduler
from unet_core.model import UNet
from unet_core.synthetic import make_synthetic_dataset


def test_scheduler_warms_up_then_decays():
    model = UNet(3, 2, base_width=4, depth=1)
    cfg = TrainConfig(epochs=4, lr=1e-2, warmup_epochs=1)
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg, steps_per_epoch=10)
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    peak = max(lrs)
    assert lrs[0] < peak / 5
    assert abs(peak - 1e-2) < 1e-3
    assert lrs[-1] < peak / 10


def test_fit_overfits_synthetic_set(tmp_path):
    """mean IoU > 0.9 on a few synthetic images, in well under a minute on CPU."""
    torch.set_num_threads(2)
    class_map = make_synthetic_dataset(tmp_path, num_images=6, size=64, seed=1)
    cfg = TrainConfig(
        epochs=40,
        batch_size=6,
        crop_size=0,
        lr=1e-2,
        warmup_epochs=2,
        val_fraction=0.0,
        augment=False,
    )
    model_cfg = ModelConfig(
        in_channels=3, num_classes=class_map.num_classes, base_width=16, depth=3
    )
    result = fit(
        tmp_path,
        class_map=class_map,
        model_config=model_cfg,
        preprocess=PreprocessConfig.for_channels(3),
        cfg=cfg,
        device="cpu",
    )
    losses = result.history["train_loss"]
    assert losses[-1] < losses[0] / 3

    from unet_core.data import pair_images_and_masks
    from unet_core.engine import PairDataset, evaluate
    from unet_core.losses import SegmentationLoss
    from unet_core.transforms import eval_transforms

    pairs = pair_images_and_masks(tmp_path)
    dataset = PairDataset(
        tmp_path,
        pairs,
        class_map,
        transform=eval_transforms(None),
        preprocess=PreprocessConfig.for_channels(3),
    )
    stats = evaluate(
        result.model,
        torch.utils.data.DataLoader(dataset, batch_size=3),
        SegmentationLoss(class_map.num_classes),
        num_classes=class_map.num_classes,
        device="cpu",
    )
    assert stats.images == 6
    assert stats.confusion.mean_iou() > 0.9


def test_fit_weighs_classes_by_their_frequency_in_the_training_masks(tmp_path):
    import numpy as np

    from unet_core.data import pair_images_and_masks, read_mask
    from unet_core.losses import class_pixel_counts, median_frequency_weights

    class_map = make_synthetic_dataset(tmp_path, num_images=4, size=32, seed=2)
    cfg = TrainConfig(epochs=1, batch_size=4, crop_size=0, val_fraction=0.0, class_balance=1.0)
    model_cfg = ModelConfig(in_channels=3, num_classes=class_map.num_classes, base_width=4,
                            depth=1)  # fmt: skip
    kwargs = dict(class_map=class_map, model_config=model_cfg, cfg=cfg, device="cpu",
                  preprocess=PreprocessConfig.for_channels(3))  # fmt: skip
    counts = [
        class_pixel_counts(read_mask(tmp_path / p.mask, class_map), class_map.num_classes)
        for p in pair_images_and_masks(tmp_path)
    ]
    expected = median_frequency_weights(counts)
    assert len(set(np.round(expected, 6))) > 1  # the synthetic classes are not balanced
    assert fit(tmp_path, **kwargs).class_weights == expected
    off = TrainConfig(epochs=1, batch_size=4, crop_size=0, val_fraction=0.0)
    assert fit(tmp_path, **{**kwargs, "cfg": off}).class_weights is None
