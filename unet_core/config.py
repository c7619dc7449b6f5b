"""Typed configuration shared by the model, the checkpoint format and the jobs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

IGNORE_INDEX = 255
"""Class index of pixels that count in no loss and no metric (mask values listed as ignored)."""

NORMS = ("batch", "group", "none")
UPSAMPLINGS = ("transpose", "bilinear")


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """Keep the keys a dataclass knows, so newer files with extra keys still load."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass
class ModelConfig:
    """Architecture of a UNet: everything needed to rebuild it before loading weights."""

    in_channels: int = 3
    """Input channels: 1 for grayscale, 3 for RGB."""
    num_classes: int = 2
    """Output classes; a binary task uses 2 (softmax), never a single logit."""
    base_width: int = 64
    """Channels of the first block (64 in the paper); doubles at each level."""
    depth: int = 4
    """Number of 2x2 poolings; inputs are padded internally to a multiple of 2**depth."""
    norm: str = "batch"
    """Normalisation after each conv: batch, group or none."""
    upsampling: str = "transpose"
    """Decoder upsampling: transpose (2x2 transposed conv, as the paper) or bilinear."""
    dropout: float = 0.0
    """Dropout probability in the bottleneck block."""

    def __post_init__(self) -> None:
        if self.in_channels not in (1, 3):
            raise ValueError(
                f"in_channels must be 1 (grayscale) or 3 (RGB), got {self.in_channels}"
            )
        if not 2 <= self.num_classes <= 255:
            raise ValueError(
                f"num_classes must be in 2..255 (a binary task uses 2 classes), got {self.num_classes}"
            )
        if self.base_width < 1 or self.depth < 1:
            raise ValueError(
                f"base_width and depth must be >= 1, got {self.base_width} and {self.depth}"
            )
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.upsampling not in UPSAMPLINGS:
            raise ValueError(f"upsampling must be one of {UPSAMPLINGS}, got {self.upsampling!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return cls(**_known(cls, data))


@dataclass
class PreprocessConfig:
    """How a uint8 image becomes the model's float input: x = (pixel / 255 - mean) / std."""

    channels: int = 3
    """Channels the model expects; inputs are converted (RGB <-> grayscale) to this."""
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    """Per-channel mean in [0, 1] units."""
    std: tuple[float, ...] = (0.25, 0.25, 0.25)
    """Per-channel standard deviation in [0, 1] units."""

    def __post_init__(self) -> None:
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if len(self.mean) == 1 and self.channels == 3:
            self.mean = self.mean * 3
        if len(self.std) == 1 and self.channels == 3:
            self.std = self.std * 3
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(
                f"mean and std need {self.channels} values (one per channel), "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be > 0, got {self.std}")

    @classmethod
    def for_channels(cls, channels: int) -> PreprocessConfig:
        return cls(channels=channels, mean=(0.5,) * channels, std=(0.25,) * channels)

    def shift_scale(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel float32 (mean * 255, 1 / (std * 255)): normalised = (x - shift) * scale.
        The one formula of every normalisation (NumPy here, torch in
        `unet_core.transforms.normalize_batch`), so training and prediction agree bit for bit."""
        shift = np.asarray(self.mean, dtype=np.float32) * 255.0
        scale = 1.0 / (np.asarray(self.std, dtype=np.float32) * 255.0)
        return shift, scale

    def normalize(self, image: np.ndarray) -> np.ndarray:
        """HxWxC uint8 -> CxHxW float32, normalised."""
        if image.ndim == 2:
            image = image[:, :, None]
        if image.shape[2] != self.channels:
            raise ValueError(
                f"image has {image.shape[2]} channels, the model expects {self.channels}"
            )
        shift, scale = self.shift_scale()
        out = (image.astype(np.float32) - shift) * scale  # (H, W, C)
        return np.ascontiguousarray(out.transpose(2, 0, 1))  # (C, H, W)

    def to_dict(self) -> dict[str, Any]:
        return {"channels": self.channels, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        return cls(**_known(cls, data))


@dataclass
class TrainConfig:
    """Optimisation settings shared by the single-process loop and the Ray Train job."""

    epochs: int = 20
    """Passes over the training set (or, with samples_per_epoch, rounds of that many crops)."""
    samples_per_epoch: int = 0
    """Crops per epoch drawn at random with replacement from the training images (the same draws for a seed and epoch whatever the number of workers; rounded down to a multiple of them), so a run of small sets of large images is defined by the crops it sees; 0 = every training image once per epoch. Validation stays exact over whole images."""
    batch_size: int = 8
    """Images per step on each worker (the global batch is batch_size * workers)."""
    crop_size: int = 256
    """Side of the random training crops (images are padded when smaller); 0 = whole images."""
    lr: float = 1e-3
    """Peak learning rate of AdamW (reached after warm-up, then cosine decay)."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    warmup_epochs: float = 1.0
    """Linear learning-rate warm-up, in epochs (may be fractional)."""
    seed: int = 0
    """Seed for weights, augmentation and the split; worker r uses seed + r for its data."""
    val_fraction: float = 0.2
    """Share of pairs (by stem hash) held out for validation when no separate set is given."""
    ce_weight: float = 1.0
    """Weight of cross-entropy in the loss."""
    dice_weight: float = 1.0
    """Weight of soft Dice in the loss."""
    augment: bool = True
    """Augment training crops as the fields below say; off: crops pass unchanged whatever they say."""
    hflip: float = 0.5
    """Probability of a left-right mirror."""
    vflip: float = 0.5
    """Probability of an up-down mirror (0 for road scenes)."""
    rotate90: float = 0.5
    """Probability of a rotation by 90, 180 or 270 degrees (0 for road scenes)."""
    scale_min: float = 1.0
    """Smallest random scale (< 1 zooms out); scale_min = scale_max = 1 with rotate_degrees 0 is off."""
    scale_max: float = 1.0
    """Largest random scale (> 1 zooms in)."""
    rotate_degrees: float = 0.0
    """Random rotation by any angle in [-x, x] degrees, with the scale in one affine; 0 = off."""
    affine: float = 1.0
    """Probability of the random scale/rotation when scale_min, scale_max or rotate_degrees turn it on."""
    elastic: float = 0.0
    """Probability of an elastic deformation (the U-Net paper's); 0 = off."""
    elastic_sigma: float = 10.0
    """Elastic displacement: standard deviation in pixels at each control point."""
    elastic_grid: int = 3
    """Elastic control points per side of the crop (3 = a 3x3 grid, as the U-Net paper)."""
    brightness: float = 0.2
    """Brightness jitter: pixels scaled by a factor in [1 - x, 1 + x]; 0 = off."""
    contrast: float = 0.2
    """Contrast jitter: distance to the mean scaled by a factor in [1 - x, 1 + x]; 0 = off."""
    channel_gain: float = 0.0
    """Colour-balance jitter: each channel scaled by its own factor in [1 - x, 1 + x] (white balance, tint of the light); 0 = off, no effect on 1-channel images."""
    saturation: float = 0.0
    """Saturation jitter: each pixel's distance to its grey scaled by a factor in [1 - x, 1 + x]; 0 = off, no effect on 1-channel images."""
    gamma: float = 0.0
    """Random gamma log-uniform in [1 / (1 + x), 1 + x]; 0 = off."""
    noise_std: float = 0.0
    """Additive Gaussian noise, standard deviation in pixel values (0..255); 0 = off."""
    border_weight: float = 0.0
    """w0 of the U-Net paper's border weight map (10 there) in the cross-entropy; 0 = off."""
    border_sigma: float = 5.0
    """sigma of the border weight map, in pixels (5 in the U-Net paper)."""
    border_class: int = 1
    """Class index whose connected components are the objects of the border weight map."""
    border_class_balance: bool = True
    """Border weight map: w_c balances the classes of each mask (inverse frequency); off: w_c = 1."""
    class_balance: float = 0.0
    """Class weights of the cross-entropy from the training masks: (median frequency / class frequency) ** x, median-frequency balancing (SegNet) at 1, softer below; 0 = every class weighs 1. The job counts up to 1,000 training masks before training."""
    max_grad_norm: float | None = 1.0
    """Gradient clipping norm; None disables clipping."""

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.samples_per_epoch < 0:
            raise ValueError(
                f"samples_per_epoch must be >= 0 (0 = one pass), got {self.samples_per_epoch}"
            )
        if self.crop_size < 0:
            raise ValueError(f"crop_size must be >= 0 (0 = whole images), got {self.crop_size}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.ce_weight < 0 or self.dice_weight < 0 or self.ce_weight + self.dice_weight == 0:
            raise ValueError("ce_weight and dice_weight must be >= 0 and not both 0")
        self._check_augmentation()
        if self.class_balance < 0:
            raise ValueError(f"class_balance must be >= 0 (0 = off), got {self.class_balance}")
        if self.border_weight < 0 or self.border_sigma <= 0 or self.border_class < 0:
            raise ValueError(
                "border_weight must be >= 0 (0 = off), border_sigma > 0 pixels and border_class "
                f"a class index >= 0; got {self.border_weight}, {self.border_sigma} and "
                f"{self.border_class}"
            )

    def _check_augmentation(self) -> None:
        for name in ("hflip", "vflip", "rotate90", "affine", "elastic"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a probability in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.scale_min <= self.scale_max:
            raise ValueError(
                f"scale_min and scale_max must satisfy 0 < scale_min <= scale_max, got "
                f"{self.scale_min} and {self.scale_max}"
            )
        if not 0.0 <= self.rotate_degrees <= 180.0:
            raise ValueError(f"rotate_degrees must be in [0, 180], got {self.rotate_degrees}")
        if self.elastic_sigma < 0 or self.elastic_grid < 2:
            raise ValueError(
                f"elastic_sigma must be >= 0 pixels and elastic_grid >= 2 control points, got "
                f"{self.elastic_sigma} and {self.elastic_grid}"
            )
        if not (0.0 <= self.brightness < 1.0 and 0.0 <= self.contrast < 1.0):
            raise ValueError(
                f"brightness and contrast must be in [0, 1), got {self.brightness} and "
                f"{self.contrast}"
            )
        if not (0.0 <= self.channel_gain < 1.0 and 0.0 <= self.saturation < 1.0):
            raise ValueError(
                f"channel_gain and saturation must be in [0, 1), got {self.channel_gain} and "
                f"{self.saturation}"
            )
        if self.gamma < 0 or self.noise_std < 0:
            raise ValueError(
                f"gamma and noise_std must be >= 0 (0 = off), got {self.gamma} and {self.noise_std}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return cls(**_known(cls, data))
