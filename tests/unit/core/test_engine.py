"""The single-process loop: the reference every distributed run is compared with."""

import pytest
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


def test_train_one_epoch_trains_on_the_border_weighted_loss():
    """A batch (x, y, w) reaches the loss with its weights: the epoch's loss (one batch: the
    model before its step) is the loss computed here by hand on a known border weight map,
    sum(w * ce) / sum(w) + soft Dice, and not the unweighted one."""
    import numpy as np
    import torch.nn.functional as F

    from unet_core.engine import train_one_epoch
    from unet_core.losses import SegmentationLoss
    from unet_core.weightmap import border_weight_map

    torch.manual_seed(0)
    model = UNet(3, 2, base_width=4, depth=1)
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[3:13, 2:7] = mask[3:13, 9:14] = 1  # two cells, a 2-pixel membrane between them
    weights = border_weight_map(mask, foreground=1, w0=10.0, sigma=2.0, class_balance=False)
    assert weights[8, 7] > 4 and weights[0, 0] == pytest.approx(1.0)  # the gap weighs, not far off
    x = torch.randn(2, 3, 16, 16)
    y = torch.from_numpy(mask).long().expand(2, 16, 16)
    w = torch.from_numpy(weights).expand(2, 16, 16)

    model.train()
    with torch.no_grad():  # by hand, the model as train_one_epoch runs it before the step
        logits = model(x.contiguous(memory_format=torch.channels_last)).float()
    ce = F.cross_entropy(logits, y, reduction="none")  # (B, H, W)
    probs, one_hot = logits.softmax(dim=1), F.one_hot(y, 2).permute(0, 3, 1, 2).float()
    dice = (2 * (probs * one_hot).sum((0, 2, 3)) + 1) / (
        probs.sum((0, 2, 3)) + one_hot.sum((0, 2, 3)) + 1
    )
    weighted = float((ce * w).sum() / w.sum() + (1 - dice).mean())
    unweighted = float(ce.mean() + (1 - dice).mean())
    assert abs(weighted - unweighted) > 1e-3, (weighted, unweighted)  # the weights matter here

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    stats = train_one_epoch(model, [(x, y, w)], optimizer, SegmentationLoss(2), device="cpu")
    assert stats.images == 2
    assert stats.loss == pytest.approx(weighted, rel=1e-5, abs=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
