"""Checkpoints as plain data: weights plus the configs to rebuild the model. No pickled code.

A file is ``torch.save`` of ``{"format": "unet-ray/1", "state_dict", "model_config",
"class_map", "preprocess", "extra"}`` holding only dicts, lists, strings, numbers and tensors,
so it loads with ``torch.load(..., weights_only=True)`` and never runs code from the file.
`load_checkpoint` also reads the ensemble format of `unet_core.ensemble` (several members'
weights and configs, one class map and preprocessing), which writes it.
"""

from __future__ import annotations

import contextlib
import io
import os
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from unet_core.classes import ClassMap
from unet_core.config import ModelConfig, PreprocessConfig
from unet_core.model import build_model

FORMAT = "unet-ray/1"
_KEYS = ("state_dict", "model_config", "class_map", "preprocess")
_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile

Source = str | os.PathLike | bytes | bytearray | BinaryIO


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def _unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        inner = [getattr(model, a, None) for a in ("module", "_orig_mod")]
        wrapped = [m for m in inner if isinstance(m, nn.Module)]
        if not wrapped:
            return model
        model = wrapped[0]


def _clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {_strip_prefixes(k): v.detach().cpu().contiguous() for k, v in state.items()}


_SCALARS = (str, int, float, bool, type(None))


def _check_plain(value: Any, where: str) -> None:
    """Raise TypeError unless `value` is data that ``weights_only=True`` can load back."""
    if type(value) in (dict, OrderedDict):
        for k, v in value.items():
            if type(k) not in (str, int):
                raise TypeError(f"{where} has a key {k!r} of type {type(k).__name__}; use str keys")
            _check_plain(v, f"{where}[{k!r}]")
    elif type(value) in (list, tuple):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
    elif type(value) not in _SCALARS and not isinstance(value, torch.Tensor):
        raise TypeError(
            f"{where} is a {type(value).__module__}.{type(value).__name__}; checkpoints hold only "
            "dicts, lists, str, int, float, bool, None and tensors (they load with "
            "weights_only=True): convert it, e.g. with float(x), x.tolist() or dataclasses.asdict"
        )


def checkpoint_payload(
    model: nn.Module,
    *,
    model_config: ModelConfig,
    class_map: ClassMap,
    preprocess: PreprocessConfig,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The plain-data dict that `save_checkpoint` writes (weights on CPU, prefixes stripped)."""
    from unet_core.ensemble import Ensemble  # it imports this module

    bare = _unwrap(model)
    if isinstance(bare, Ensemble):
        if len(bare.members) > 1:
            raise TypeError(
                f"model is an ensemble of {len(bare.members)} members; write it with "
                "unet_core.ensemble.save_ensemble (this format holds one model)"
            )
        bare = _unwrap(bare.members[0])
    own = getattr(bare, "config", None)
    if isinstance(own, ModelConfig) and own != model_config:
        raise ValueError(
            f"model_config {model_config} does not describe the model ({own}); "
            "pass model_config=model.config"
        )
    extra = dict(extra or {})
    _check_plain(extra, "extra")
    return {
        "format": FORMAT,
        "state_dict": _clean_state_dict(bare.state_dict()),
        "model_config": model_config.to_dict(),
        "class_map": class_map.to_dict(),
        "preprocess": preprocess.to_dict(),
        "extra": extra,
    }


def checkpoint_to_bytes(
    model: nn.Module,
    *,
    model_config: ModelConfig,
    class_map: ClassMap,
    preprocess: PreprocessConfig,
    extra: dict[str, Any] | None = None,
) -> bytes:
    """A checkpoint as bytes, e.g. for a single S3 PUT; `load_checkpoint` reads it back."""
    buffer = io.BytesIO()
    torch.save(
        checkpoint_payload(
            model,
            model_config=model_config,
            class_map=class_map,
            preprocess=preprocess,
            extra=extra,
        ),
        buffer,
    )
    return buffer.getvalue()


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    model_config: ModelConfig,
    class_map: ClassMap,
    preprocess: PreprocessConfig,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint atomically: a temporary file in the same folder, fsync, then rename.

    A reader sees the old file or the new one, never half of one. DDP / torch.compile wrappers
    are unwrapped; ``extra`` must be plain data (TypeError names the offending entry).
    """
    payload = checkpoint_payload(
        model, model_config=model_config, class_map=class_map, preprocess=preprocess, extra=extra
    )
    write_atomic(path, payload)


def write_atomic(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """``torch.save`` of ``payload`` to ``path`` through a temporary sibling, fsync and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@dataclass
class LoadedModel:
    model: nn.Module
    """Rebuilt from model_config with the saved weights, in eval mode; for an ensemble file a
    `unet_core.ensemble.Ensemble` of its members (logits: the log of their mean softmax)."""
    model_config: ModelConfig
    """The model's architecture; of an ensemble, its first member's."""
    class_map: ClassMap
    """Class names and mask values the model predicts."""
    preprocess: PreprocessConfig
    """Channels and normalisation the model was trained with."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Plain data saved with the checkpoint (epoch, metrics...)."""
    members: int = 1
    """Models averaged by ``model``: 1 for a single model, K for an ensemble of K."""


def read_payload(
    source: Source, *, map_location: str | torch.device | None = "cpu"
) -> tuple[str, Any]:
    """(the source's name for errors, what ``torch.load(weights_only=True)`` reads from it)."""
    if isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        if not Path(name).is_file():
            raise FileNotFoundError(
                f"checkpoint {name} does not exist (or is not a file); pass the path of a .pt file "
                "written by unet_core.checkpoint.save_checkpoint"
            )
        stream: Any = name
    else:
        name = "<checkpoint bytes>"
        stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        payload = torch.load(stream, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt, truncated or unsafe files
        raise ValueError(
            f"{name}: not a loadable unet-ray checkpoint ({type(exc).__name__}: {exc}); only "
            "files written by unet_core.checkpoint.save_checkpoint are accepted"
        ) from exc
    return name, payload


def load_checkpoint(
    source: Source, *, map_location: str | torch.device | None = "cpu"
) -> LoadedModel:
    """Rebuild the model from a checkpoint file, its bytes, or a binary stream: a single model
    (this module's format) or an ensemble (`unet_core.ensemble`, ``members`` > 1).

    Loads with ``weights_only=True``: files holding pickled objects are refused. The model is
    placed on ``map_location`` (when it names a device) and put in eval mode. Errors name the file.
    """
    name, payload = read_payload(source, map_location=map_location)
    if isinstance(payload, dict) and payload.get("format") != FORMAT:
        from unet_core import ensemble  # it imports this module

        if payload.get("format") == ensemble.ENSEMBLE_FORMAT:
            return ensemble.loaded_ensemble(payload, name=name, map_location=map_location)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(
            f"{name}: expected checkpoint format {FORMAT!r}, found {found!r}; write it with "
            "unet_core.checkpoint.save_checkpoint"
        )
    require_keys(payload, _KEYS, name)
    model_config, model = rebuild_model(payload, name)
    try:
        preprocess = PreprocessConfig.from_dict(payload["preprocess"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: weights or configs do not fit together: {exc}") from exc
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return LoadedModel(
        model=model.eval(),
        model_config=model_config,
        class_map=ClassMap.from_dict(payload["class_map"], source=name),
        preprocess=preprocess,
        extra=dict(payload.get("extra") or {}),
    )


def require_keys(payload: dict[str, Any], keys: tuple[str, ...], name: str) -> None:
    """ValueError naming the file and the keys that ``payload`` lacks."""
    missing = [k for k in keys if k not in payload]
    if missing:
        raise ValueError(f"{name}: checkpoint lacks {missing}; the file is incomplete")


def rebuild_model(entry: dict[str, Any], name: str) -> tuple[ModelConfig, nn.Module]:
    """The model of ``entry["model_config"]`` holding ``entry["state_dict"]`` (train mode, CPU
    or where the tensors are); ValueError naming ``name`` when they do not fit together."""
    try:
        model_config = ModelConfig.from_dict(entry["model_config"])
        model = build_model(model_config)
        model.load_state_dict({_strip_prefixes(k): v for k, v in entry["state_dict"].items()})
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{name}: weights or configs do not fit together: {exc}") from exc
    return model_config, model
