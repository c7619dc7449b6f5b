"""Checkpoints as plain data: weights plus the configs to rebuild the model. No pickled code."""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from unet_core.classes import ClassMap
from unet_core.config import ModelConfig, PreprocessConfig
from unet_core.model import UNet

FORMAT = "unet-ray/1"


def _clean_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Weights on CPU with DDP (`module.`) and torch.compile (`_orig_mod.`) prefixes removed."""
    model = getattr(model, "module", model)
    model = getattr(model, "_orig_mod", model)
    out = {}
    for key, value in model.state_dict().items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value.detach().cpu().contiguous()
    return out


def checkpoint_payload(
    model: nn.Module,
    *,
    model_config: ModelConfig,
    class_map: ClassMap,
    preprocess: PreprocessConfig,
    extra: dict | None = None,
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "state_dict": _clean_state_dict(model),
        "model_config": model_config.to_dict(),
        "class_map": class_map.to_dict(),
        "preprocess": preprocess.to_dict(),
        "extra": dict(extra or {}),
    }


def checkpoint_to_bytes(model: nn.Module, **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(checkpoint_payload(model, **kwargs), buffer)
    return buffer.getvalue()


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    model_config: ModelConfig,
    class_map: ClassMap,
    preprocess: PreprocessConfig,
    extra: dict | None = None,
) -> None:
    """Write atomically: a temporary file in the same folder, then a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = checkpoint_to_bytes(
        model, model_config=model_config, class_map=class_map, preprocess=preprocess, extra=extra
    )
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@dataclass
class LoadedModel:
    model: UNet
    model_config: ModelConfig
    class_map: ClassMap
    preprocess: PreprocessConfig
    extra: dict[str, Any] = field(default_factory=dict)


def load_checkpoint(
    source: str | Path | bytes | BinaryIO, *, map_location: str | torch.device = "cpu"
) -> LoadedModel:
    """Rebuild the UNet from a checkpoint file, bytes or stream (``weights_only=True``)."""
    name = str(source) if isinstance(source, (str, Path)) else "<checkpoint bytes>"
    if isinstance(source, (str, Path)) and not Path(source).is_file():
        raise FileNotFoundError(f"checkpoint {source} does not exist")
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        payload = torch.load(stream, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise ValueError(
            f"{name}: not a loadable unet-ray checkpoint ({type(exc).__name__}: {exc}); only "
            "files written by unet_core.checkpoint.save_checkpoint are accepted"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{name}: expected checkpoint format {FORMAT!r}, found {found!r}")
    model_config = ModelConfig.from_dict(payload["model_config"])
    model = UNet.from_config(model_config)
    state = {
        k.removeprefix("module.").removeprefix("_orig_mod."): v
        for k, v in payload["state_dict"].items()
    }
    model.load_state_dict(state)
    return LoadedModel(
        model=model,
        model_config=model_config,
        class_map=ClassMap.from_dict(payload["class_map"], source=name),
        preprocess=PreprocessConfig.from_dict(payload["preprocess"]),
        extra=dict(payload.get("extra") or {}),
    )
