"""unet_core: UNet semantic segmentation in PyTorch, NumPy and Pillow (no Ray, MLflow or boto3).

from unet_core import UNet, predict, load_checkpoint

Names are imported on first use (PEP 562): ``from unet_core.data import decode_image`` in a
decode or write worker loads NumPy and Pillow only, not PyTorch (~1.3 s of CPU per process).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from unet_core.checkpoint import (
        LoadedModel,
        checkpoint_to_bytes,
        load_checkpoint,
        save_checkpoint,
    )
    from unet_core.classes import ClassInfo, ClassMap, MaskValueError
    from unet_core.compiled import compile_model
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
    from unet_core.fold import fold_batchnorm
    from unet_core.inference_device import (
        default_tile_size,
        enable_cudnn_benchmark,
        prepare_for_inference,
        resolve_device,
    )
    from unet_core.losses import SegmentationLoss
    from unet_core.metrics import ConfusionMatrix, adapted_rand_error, segment_labels
    from unet_core.model import UNet
    from unet_core.precision import autocast_context
    from unet_core.predict import Prediction, predict, predict_batch, predict_tensor
    from unet_core.synthetic import make_synthetic_dataset
    from unet_core.tta import TTA_MODES
    from unet_core.weightmap import border_weight_map

_EXPORTS = {
    "LoadedModel": "unet_core.checkpoint",
    "checkpoint_to_bytes": "unet_core.checkpoint",
    "load_checkpoint": "unet_core.checkpoint",
    "save_checkpoint": "unet_core.checkpoint",
    "ClassInfo": "unet_core.classes",
    "ClassMap": "unet_core.classes",
    "MaskValueError": "unet_core.classes",
    "compile_model": "unet_core.compiled",
    "IGNORE_INDEX": "unet_core.config",
    "ModelConfig": "unet_core.config",
    "PreprocessConfig": "unet_core.config",
    "TrainConfig": "unet_core.config",
    "ImageDecodeError": "unet_core.data",
    "Pair": "unet_core.data",
    "PairingError": "unet_core.data",
    "decode_image": "unet_core.data",
    "decode_mask": "unet_core.data",
    "load_class_map": "unet_core.data",
    "pair_images_and_masks": "unet_core.data",
    "split_pairs": "unet_core.data",
    "evaluate": "unet_core.engine",
    "fit": "unet_core.engine",
    "train_one_epoch": "unet_core.engine",
    "fold_batchnorm": "unet_core.fold",
    "SegmentationLoss": "unet_core.losses",
    "ConfusionMatrix": "unet_core.metrics",
    "adapted_rand_error": "unet_core.metrics",
    "segment_labels": "unet_core.metrics",
    "UNet": "unet_core.model",
    "Prediction": "unet_core.predict",
    "autocast_context": "unet_core.precision",
    "default_tile_size": "unet_core.inference_device",
    "enable_cudnn_benchmark": "unet_core.inference_device",
    "predict": "unet_core.predict",
    "predict_batch": "unet_core.predict",
    "predict_tensor": "unet_core.predict",
    "prepare_for_inference": "unet_core.inference_device",
    "resolve_device": "unet_core.inference_device",
    "make_synthetic_dataset": "unet_core.synthetic",
    "TTA_MODES": "unet_core.tta",
    "border_weight_map": "unet_core.weightmap",
}
__all__ = [
    "IGNORE_INDEX",
    "TTA_MODES",
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
    "adapted_rand_error",
    "autocast_context",
    "border_weight_map",
    "checkpoint_to_bytes",
    "compile_model",
    "decode_image",
    "decode_mask",
    "default_tile_size",
    "enable_cudnn_benchmark",
    "evaluate",
    "fit",
    "fold_batchnorm",
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
    "segment_labels",
    "split_pairs",
    "train_one_epoch",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'unet_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cached: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
