"""Training and evaluation steps, and a minimal single-process training loop.

The step functions take any iterable of ``(images, masks)`` tensor batches, so the same code
runs here over a torch DataLoader and inside Ray Train workers over Ray Data shards.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from unet_core.classes import ClassMap
from unet_core.config import ModelConfig, PreprocessConfig, TrainConfig
from unet_core.data import Pair, pair_images_and_masks, read_image, read_mask, split_pairs
from unet_core.image_files import DecodeOptions
from unet_core.losses import SegmentationLoss, class_pixel_counts, median_frequency_weights
from unet_core.metrics import ConfusionMatrix
from unet_core.model import UNet
from unet_core.precision import autocast, autocast_dtype
from unet_core.schedule import ProgressLR
from unet_core.transforms import (
    collate_pairs,
    eval_transforms,
    to_tensors,
    transforms_for_training,
)

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, ...]
"""(images, targets) or (images, targets, per-pixel loss weights)."""


def make_optimizer(
    model: nn.Module, cfg: TrainConfig, *, encoder_lr_scale: float = 1.0
) -> torch.optim.AdamW:
    """AdamW without weight decay on norms and biases. With ``encoder_lr_scale`` != 1 the
    encoder's parameters (``model.encoder_parameters()``) form two more groups at ``cfg.lr *
    encoder_lr_scale``; the schedule scales every group's own peak alike. Group 0 is always at
    ``cfg.lr`` (the logged lr)."""
    module = getattr(model, "module", model)  # DDP: the same parameters
    encoder = set()
    if encoder_lr_scale != 1.0:
        encoder = {id(p) for p in module.encoder_parameters()}
    groups = []
    for in_encoder, lr in ((False, cfg.lr), (True, cfg.lr * encoder_lr_scale)):
        if in_encoder and not encoder:
            break  # one learning rate: two groups, as checkpoints before the scale hold
        decay, no_decay = [], []
        for p in model.parameters():
            if p.requires_grad and (id(p) in encoder) == in_encoder:
                (decay if p.ndim > 1 else no_decay).append(p)
        groups += [
            {"params": decay, "weight_decay": cfg.weight_decay, "lr": lr},
            {"params": no_decay, "weight_decay": 0.0, "lr": lr},
        ]
    return torch.optim.AdamW(groups, lr=cfg.lr)


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> ProgressLR:
    """Per-step linear warm-up then cosine decay to 1% of the peak learning rate, as a function
    of the epochs done (`unet_core.schedule`), so a resume with another steps_per_epoch keeps
    to the curve."""
    return ProgressLR(
        optimizer,
        epochs=cfg.epochs,
        warmup_epochs=cfg.warmup_epochs,
        steps_per_epoch=steps_per_epoch,
    )


@dataclass
class EpochStats:
    loss: float
    """Mean training loss per image."""
    images: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    *,
    device: torch.device | str,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    amp_dtype: torch.dtype | None = None,
    max_grad_norm: float | None = None,
) -> EpochStats:
    """One pass over ``batches``; the loss is summed on the device and read once at the end, so
    the loop never waits for the device (a per-step ``.item()`` would)."""
    device = torch.device(device)
    model.train()
    loss_sum, images = torch.zeros((), dtype=torch.float64, device=device), 0
    start = time.perf_counter()
    for x, y, *weights in batches:  # (x, y) or (x, y, per-pixel loss weights)
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y = y.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            logits = model(x)  # (B, K, H, W)
        if weights:
            loss = loss_fn(logits.float(), y, weights[0].to(device, non_blocking=True))
        else:
            loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm:
            nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss.detach().double() * x.shape[0]  # float64: the sum of loss.item() * B
        images += x.shape[0]
    total = loss_sum.item()  # the one sync, before the clock stops: the time includes the device
    seconds = time.perf_counter() - start
    return EpochStats(loss=total / max(1, images), images=images, seconds=seconds)


@dataclass
class EvalStats:
    loss_sum: float
    images: int
    confusion: ConfusionMatrix

    @property
    def loss(self) -> float:
        return self.loss_sum / self.images if self.images else float("nan")


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    batches: Iterable[Batch],
    loss_fn: nn.Module,
    *,
    num_classes: int,
    device: torch.device | str,
    amp_dtype: torch.dtype | None = None,
) -> EvalStats:
    """Loss summed per image and the confusion matrix; sums, so workers can all-reduce them.
    The loss sum stays on the device until the end; ``ConfusionMatrix.update`` copies its K * K
    counts to the host once per batch."""
    device = torch.device(device)
    model.eval()
    confusion = ConfusionMatrix(num_classes)
    loss_sum, images = torch.zeros((), dtype=torch.float64, device=device), 0
    for x, y in batches:
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y = y.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            logits = model(x)  # (B, K, H, W)
        loss_sum += loss_fn(logits.float(), y).double() * x.shape[0]
        images += x.shape[0]
        confusion.update(logits.argmax(dim=1), y)
    return EvalStats(loss_sum=loss_sum.item(), images=images, confusion=confusion)


class PairDataset(torch.utils.data.Dataset):
    """Local image/mask pairs, decoded and transformed per item with a per-(epoch, item) seed."""

    def __init__(
        self,
        root: str | Path,
        pairs: list[Pair],
        class_map: ClassMap,
        *,
        transform: Callable,
        preprocess: PreprocessConfig,
        seed: int = 0,
        raw: bool = False,
    ) -> None:
        self.root = Path(root)
        self.pairs = pairs
        self.class_map = class_map
        self.transform = transform
        self.preprocess = preprocess
        self.seed = seed
        self.raw = raw  # the augmented uint8 arrays (for `collate_pairs`), not tensors
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Batch:
        pair = self.pairs[index]
        options = DecodeOptions(pixel_values=self.preprocess.pixel_values)  # 8-bit or own values
        image = read_image(
            self.root / pair.image, channels=self.preprocess.channels, options=options
        )
        mask = read_mask(self.root / pair.mask, self.class_map)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        image, mask = self.transform(image, mask, rng)
        if self.raw:
            return np.ascontiguousarray(image), np.ascontiguousarray(mask)
        return to_tensors(image, mask, self.preprocess)


@dataclass
class FitResult:
    model: UNet
    history: dict[str, list[float]] = field(default_factory=dict)
    val: EvalStats | None = None
    class_weights: list[float] | None = None
    """The cross-entropy's class weights (``cfg.class_balance``); None: all 1."""


def fit(
    root: str | Path,
    *,
    class_map: ClassMap,
    model_config: ModelConfig,
    preprocess: PreprocessConfig,
    cfg: TrainConfig,
    pairs: list[Pair] | None = None,
    device: torch.device | str | None = None,
    log_every_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> FitResult:
    """Train a UNet on a local folder in one process: the reference loop for tests and baselines.

    Validates on the stem-hash split when ``cfg.val_fraction > 0``; whole validation images are
    used (no crops), so the metrics are those of full-size prediction.
    """
    if cfg.samples_per_epoch or cfg.border_weight:
        raise ValueError(
            "fit trains one pass per epoch without border weights: samples_per_epoch and "
            "border_weight are options of the Ray Train job (jobs/train.py)"
        )
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(cfg.seed)
    pairs = pairs if pairs is not None else pair_images_and_masks(root)
    train_pairs, val_pairs = split_pairs(pairs, val_fraction=cfg.val_fraction, seed=cfg.seed)
    transform = transforms_for_training(cfg, rgb=preprocess.is_rgb)
    train_set = PairDataset(
        root,
        train_pairs,
        class_map,
        transform=transform,
        preprocess=preprocess,
        seed=cfg.seed,
        raw=True,
    )
    loader = torch.utils.data.DataLoader(
        train_set,
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=False,
        generator=torch.Generator().manual_seed(cfg.seed),
        collate_fn=functools.partial(collate_pairs, preprocess=preprocess),
    )
    val_loader = None
    if val_pairs:
        val_set = PairDataset(
            root, val_pairs, class_map, transform=eval_transforms(None), preprocess=preprocess
        )
        val_loader = torch.utils.data.DataLoader(val_set, batch_size=1)

    model = UNet.from_config(model_config).to(device).to(memory_format=torch.channels_last)
    class_weights = None
    if cfg.class_balance:  # every training mask: fit is for small local sets
        counts = [
            class_pixel_counts(read_mask(Path(root) / p.mask, class_map), model_config.num_classes)
            for p in train_pairs
        ]
        class_weights = median_frequency_weights(counts, power=cfg.class_balance)
    loss_fn = SegmentationLoss(
        model_config.num_classes,
        ce_weight=cfg.ce_weight,
        dice_weight=cfg.dice_weight,
        class_weights=class_weights,
    )
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch=len(loader))
    amp = autocast_dtype(device, training=True)
    history: dict[str, list[float]] = {"train_loss": []}
    val: EvalStats | None = None
    for epoch in range(cfg.epochs):
        train_set.set_epoch(epoch)
        stats = train_one_epoch(
            model,
            loader,
            optimizer,
            loss_fn,
            device=device,
            scheduler=scheduler,
            amp_dtype=amp,
            max_grad_norm=cfg.max_grad_norm,
        )
        row = {"train_loss": stats.loss, "images_per_second": stats.images_per_second}
        if val_loader is not None:
            val = evaluate(
                model,
                val_loader,
                loss_fn,
                num_classes=model_config.num_classes,
                device=device,
                amp_dtype=amp,
            )
            row.update(val_loss=val.loss, val_miou=val.confusion.mean_iou())
        for key, value in row.items():
            history.setdefault(key, []).append(float(value))
        log.info(
            "epoch %d/%d %s",
            epoch + 1,
            cfg.epochs,
            " ".join(f"{k}={v:.4f}" for k, v in row.items()),
        )
        if log_every_epoch is not None:
            log_every_epoch(epoch, row)
    return FitResult(model=model, history=history, val=val, class_weights=class_weights)
