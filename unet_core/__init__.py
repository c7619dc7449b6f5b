"""unet_core: UNet semantic segmentation in PyTorch, NumPy and Pillow (no Ray, MLflow or boto3).

from unet_core import UNet, predict, load_checkpoint
"""

from unet_core.checkpoint import (
    LoadedModel,
    checkpoint_to_bytes,
    load_checkpoint,
    save_checkpoint,
)
from unet_core.classes import ClassInfo, ClassMap, MaskValueError
from unet_core.config import IGNORE_INDEX, ModelConfig, PreprocessConfig, TrainConfig
from unet_core.data import (
    ImageDecodeError,
    Pair,
    PairingError,
    decode_image,
    decode_mask,
    load_class_map,
    pair_images_and_masks,
    split_pairs,
)
from unet_core.engine import evaluate, fit, train_one_epoch
from unet_core.losses import SegmentationLoss
from unet_core.metrics import ConfusionMatrix
from unet_core.model import UNet
from unet_core.predict import (
    Prediction,
    autocast_context,
    predict,
    predict_batch,
    predict_tensor,
    prepare_for_inference,
    resolve_device,
)
from unet_core.synthetic import make_synthetic_dataset

__all__ = [
    "IGNORE_INDEX",
    "ClassInfo",
    "ClassMap",
    "ConfusionMatrix",
    "ImageDecodeError",
    "LoadedModel",
    "MaskValueError",
    "ModelConfig",
    "Pair",
    "PairingError",
    "Prediction",
    "PreprocessConfig",
    "SegmentationLoss",
    "TrainConfig",
    "UNet",
    "autocast_context",
    "checkpoint_to_bytes",
    "decode_image",
    "decode_mask",
    "evaluate",
    "fit",
    "load_checkpoint",
    "load_class_map",
    "make_synthetic_dataset",
    "pair_images_and_masks",
    "predict",
    "predict_batch",
    "predict_tensor",
    "prepare_for_inference",
    "resolve_device",
    "save_checkpoint",
    "split_pairs",
    "train_one_epoch",
]
__version__ = "0.1.0"
