"""Typed configuration shared by the model, the checkpoint format and the jobs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

IGNORE_INDEX = 255
"""Class index of pixels that count in no loss and no metric (mask values listed as ignored)."""

NORMS = ("batch", "group", "none")
UPSAMPLINGS = ("transpose", "bilinear")
ENCODERS = (
    "unet",
    "resnet18",
    "resnet34",
    "resnet50",
    "efficientnet-lite0",
    "efficientnet-lite1",
    "efficientnet-lite2",
)
"""`ModelConfig.encoder` choices: the plain UNet encoder, or a pretrainable backbone (docs/encoders.md)."""


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """Keep the keys a dataclass knows, so newer files with extra keys still load."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass
class ModelConfig:
    """Architecture of a UNet: everything needed to rebuild it before loading weights."""

    in_channels: int = 3
    """Input channels: 1 for grayscale, 3 for RGB, any N >= 1 for other bands."""
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
    encoder: str = "unet"
    """Encoder of the UNet: unet (the plain UNet down path, widths from base_width, `depth` poolings), resnet18, resnet34, resnet50 (torchvision's layer names, so its state dicts load), efficientnet-lite0, efficientnet-lite1, efficientnet-lite2. The pretrained encoders have 5 fixed stride-2 stages: `depth` is ignored (always 5, inputs padded to a multiple of 32) and base_width sets the decoder widths only (docs/encoders.md)."""

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise ValueError(
                f"encoder must be one of {ENCODERS}, got {self.encoder!r} (files without the key "
                "are unet models)"
            )
        if self.in_channels < 1:
            raise ValueError(
                f"in_channels must be >= 1 (1 grayscale, 3 RGB, N bands), got {self.in_channels}"
            )
        if not 2 <= self.num_classes <= 255:
            raise ValueError(
                f"num_classes must be in 2..255 (a binary task uses 2 classes), got {self.num_classes}"
            )
        if self.base_width < 1 or self.depth < 1:
            raise ValueError(
                f"base_width and depth must be >= 1, got {self.base_width} and {self.depth} "
                "(depth counts for encoder unet only: the pretrained encoders have 5 stages)"
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


SCHEMES = ("legacy_uint8", "scale_zscore", "clip_zscore")
"""How pixels become the model's input (`Preprocessing.scheme`)."""
RGB_NAMES = ("red", "green", "blue")


def _floats(values: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


@dataclass
class Preprocessing:
    """How a decoded image becomes the model's float input: one formula for every scheme,
    normalised = (clip(x, clip_low, clip_high) - shift) * scale (`shift_scale`), in NumPy
    (`normalize`) and torch (`unet_core.transforms.normalize_batch`) alike."""

    channels: int = 3
    """Channels the model takes (any N >= 1; legacy_uint8: 1 or 3)."""
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    """Per-channel mean: in 0..1 units (pixel / 255) for legacy_uint8 and scale_zscore, in the data's own units for clip_zscore."""
    std: tuple[float, ...] = (0.25, 0.25, 0.25)
    """Per-channel standard deviation, in the units of mean."""
    scheme: str = "legacy_uint8"
    """legacy_uint8: every image decoded to 8-bit grayscale or RGB (16-bit / 257), then (x / 255 - mean) / std (models saved before schemes existed); scale_zscore: 8-bit images as they are, (x / 255 - mean) / std with the training set's mean and std; clip_zscore: images in their own values (8 to 16 bits, float), clipped to the set's 0.5/99.5 percentiles (clip_low, clip_high), then (x - mean) / std."""
    clip_low: tuple[float, ...] = ()
    """Per-channel lower clip (the data's own units; clip_zscore only)."""
    clip_high: tuple[float, ...] = ()
    """Per-channel upper clip (the data's own units; clip_zscore only)."""
    channel_names: tuple[str, ...] = ()
    """What each channel is: ("red", "green", "blue") for RGB, ("gray",), or named bands ("red", "green", "blue", "nir"); () = from the count (3: RGB, 1: gray, else band0..)."""

    def __post_init__(self) -> None:
        self.mean, self.std = _floats(self.mean), _floats(self.std)
        self.clip_low, self.clip_high = _floats(self.clip_low), _floats(self.clip_high)
        self.channel_names = tuple(str(n) for n in self.channel_names)
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {self.scheme!r}")
        if self.channels < 1 or (self.scheme == "legacy_uint8" and self.channels not in (1, 3)):
            raise ValueError(
                f"channels must be >= 1 (legacy_uint8: 1 or 3), got {self.channels} "
                f"for scheme {self.scheme}"
            )
        if len(self.mean) == 1 and self.channels > 1:  # one value for every channel
            self.mean = self.mean * self.channels
        if len(self.std) == 1 and self.channels > 1:
            self.std = self.std * self.channels
        for name in ("mean", "std", "channel_names") + (
            ("clip_low", "clip_high") if self.scheme == "clip_zscore" else ()
        ):
            value = getattr(self, name)
            if name == "channel_names" and not value:
                continue
            if len(value) != self.channels:
                raise ValueError(
                    f"{name} needs {self.channels} values (one per channel), got {len(value)}"
                )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be > 0, got {self.std}")
        if self.scheme == "clip_zscore" and any(
            lo > hi for lo, hi in zip(self.clip_low, self.clip_high, strict=True)
        ):
            raise ValueError(
                f"clip_low must be <= clip_high, got {self.clip_low} and {self.clip_high}"
            )

    @classmethod
    def for_channels(cls, channels: int) -> Preprocessing:
        """The legacy_uint8 default (mean 0.5, std 0.25) of a 1- or 3-channel model."""
        return cls(channels=channels, mean=(0.5,) * channels, std=(0.25,) * channels)

    @property
    def names(self) -> tuple[str, ...]:
        """channel_names, or the defaults of the count (RGB, gray, band0..)."""
        if self.channel_names:
            return self.channel_names
        if self.channels == 3:
            return RGB_NAMES
        return ("gray",) if self.channels == 1 else tuple(f"band{i}" for i in range(self.channels))

    @property
    def is_rgb(self) -> bool:
        """Whether the channels are red, green, blue (colour augmentations apply only then)."""
        return self.names == RGB_NAMES

    @property
    def pixel_values(self) -> str:
        """How images are decoded for this model (`unet_core.image_files.DecodeOptions`):
        "uint8" (8-bit grayscale or RGB, converted) or "native" (the file's own values)."""
        eight_bit = self.scheme in ("legacy_uint8", "scale_zscore") and self.channels in (1, 3)
        return "uint8" if eight_bit else "native"

    def shift_scale(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel float32 (shift, scale): normalised = (clip(x) - shift) * scale; for the
        0..1 schemes shift = mean * 255, scale = 1 / (std * 255). The one formula of every
        normalisation (NumPy here, torch in `unet_core.transforms.normalize_batch`), so
        training and prediction agree bit for bit."""
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        if self.scheme == "clip_zscore":
            return mean, (1.0 / std).astype(np.float32)
        return mean * 255.0, 1.0 / (std * 255.0)

    def clip_bounds(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Per-channel float32 (low, high) to clip to before the shift; None: no clip."""
        if self.scheme != "clip_zscore":
            return None
        return np.asarray(self.clip_low, np.float32), np.asarray(self.clip_high, np.float32)

    def normalize(self, image: np.ndarray) -> np.ndarray:
        """HxWxC image (uint8, uint16 or float32) -> CxHxW float32, normalised."""
        if image.ndim == 2:
            image = image[:, :, None]
        if image.shape[2] != self.channels:
            raise ValueError(
                f"image has {image.shape[2]} channels, the model expects {self.channels}"
            )
        shift, scale = self.shift_scale()
        x = image.astype(np.float32)
        bounds = self.clip_bounds()
        if bounds is not None:  # non-finite float pixels count as 0 before the clip
            x = np.clip(np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0), *bounds)
        out = (x - shift) * scale  # (H, W, C)
        return np.ascontiguousarray(out.transpose(2, 0, 1))  # (C, H, W)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "channels": self.channels,
            "mean": list(self.mean),
            "std": list(self.std),
            "scheme": self.scheme,
        }
        if self.scheme == "clip_zscore":
            out.update(clip_low=list(self.clip_low), clip_high=list(self.clip_high))
        if self.channel_names:
            out["channel_names"] = list(self.channel_names)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        """A saved preprocessing; one without a scheme (saved before schemes) is legacy_uint8."""
        return cls(**_known(cls, data))


PreprocessConfig = Preprocessing
"""The name checkpoints and callers used before schemes: the same class."""


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
