"""Ensembles: several models of one task (one class map, one preprocessing) used as one model.

`Ensemble` gives the log of its members' mean softmax, so ``softmax(ensemble(x))`` is the mean
of the members' probabilities and everything that takes logits (`unet_core.predict`, TTA,
export) averages the members' softmax with no change: TTA over the ensemble is each member's
TTA averaged (`unet_core.tta.mean_softmax` averages probabilities, and the softmax of the
ensemble's output is already a mean of probabilities). An ensemble of one member gives that
member's logits bit for bit.

The file is plain data, like a single checkpoint (`unet_core.checkpoint`), and loads with
``torch.load(..., weights_only=True)``::

    {"format": "unet-ray-ensemble/1",
     "members": [{"state_dict", "model_config", "extra"}, ...],
     "class_map", "preprocess", "extra"}

`unet_core.checkpoint.load_checkpoint` reads both formats (``LoadedModel.members`` says how
many models it averages); a release that predates this file refuses it with its format error.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from unet_core.checkpoint import (
    LoadedModel,
    Source,
    _check_plain,
    _clean_state_dict,
    _unwrap,
    load_checkpoint,
    read_payload,
    rebuild_model,
    require_keys,
    write_atomic,
)
from unet_core.classes import ClassMap
from unet_core.config import PreprocessConfig
from unet_core.model import required_multiple

__all__ = [
    "ENSEMBLE_FORMAT",
    "Ensemble",
    "ensemble_of",
    "ensemble_payload",
    "ensemble_to_bytes",
    "loaded_ensemble",
    "model_multiple",
    "read_members",
    "save_ensemble",
]

ENSEMBLE_FORMAT = "unet-ray-ensemble/1"
_KEYS = ("members", "class_map", "preprocess")
_MEMBER_KEYS = ("state_dict", "model_config")

Member = LoadedModel | Source
"""A member to write: a loaded model, or a single-model checkpoint (path, bytes or stream)."""


def model_multiple(model: nn.Module) -> int:
    """What ``model`` pads H and W up to internally: `unet_core.model.required_multiple` of its
    config; of an ensemble, the largest of its members'."""
    model = _unwrap(model)
    if isinstance(model, Ensemble):
        return model.required_multiple
    return required_multiple(model.config)


class Ensemble(nn.Module):
    """Members that take the same input channels and predict the same classes; ``forward``
    gives (B, K, H, W) float32 ``log(mean_i softmax(member_i(x)))`` (one member: its logits
    as they are). The class map and preprocessing they share travel in the file, not here."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member model")
        first = getattr(members[0], "config", None)
        for i, member in enumerate(members[1:], start=1):
            config = getattr(member, "config", None)
            if first is None or config is None:
                continue
            for key in ("in_channels", "num_classes"):
                if getattr(config, key) != getattr(first, key):
                    raise ValueError(
                        f"ensemble member {i} has {key}={getattr(config, key)} but member 0 "
                        f"has {getattr(first, key)}; members must take the same input and "
                        "predict the same classes"
                    )
        self.members = nn.ModuleList(members)

    @property
    def required_multiple(self) -> int:
        """The largest of the members' padding multiples (each member pads for itself)."""
        return max(model_multiple(m) for m in self.members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.members) == 1:
            return self.members[0](x)
        # log of the mean probability, computed stably in float32 (also under autocast):
        # logsumexp_i(log_softmax(z_i)) - log(M) = log(mean_i softmax(z_i))
        logp = torch.stack([m(x).float().log_softmax(dim=1) for m in self.members])  # (M,B,K,H,W)
        return torch.logsumexp(logp, dim=0) - math.log(len(self.members))  # (B, K, H, W)


def _as_loaded(member: Member, i: int) -> LoadedModel:
    loaded = member if isinstance(member, LoadedModel) else load_checkpoint(member)
    bare = _unwrap(loaded.model)
    if isinstance(bare, Ensemble):
        if len(bare.members) > 1:
            raise ValueError(
                f"ensemble member {i} is itself an ensemble of {len(bare.members)} models; "
                "pass its members (unet_core.ensemble.read_members) instead"
            )
        loaded = LoadedModel(
            _unwrap(bare.members[0]),
            loaded.model_config,
            loaded.class_map,
            loaded.preprocess,
            loaded.extra,
        )
    return loaded


def _member_name(member: Member, i: int) -> str:
    where = os.fspath(member) if isinstance(member, (str, os.PathLike)) else None
    return f"member {i}" + (f" ({where})" if where else "")


def _check_alike(loaded: Sequence[LoadedModel], names: Sequence[str]) -> None:
    """ValueError naming the first member that differs from member 0 and in what."""
    first = loaded[0]
    for member, name in zip(loaded[1:], names[1:], strict=True):
        differences = {
            "class map": (member.class_map.to_dict(), first.class_map.to_dict()),
            "preprocessing": (member.preprocess.to_dict(), first.preprocess.to_dict()),
            "in_channels": (member.model_config.in_channels, first.model_config.in_channels),
            "num_classes": (member.model_config.num_classes, first.model_config.num_classes),
        }
        for what, (theirs, ours) in differences.items():
            if theirs != ours:
                raise ValueError(
                    f"ensemble {name} has another {what} than {names[0]}: {theirs} != {ours}; "
                    "members must share class map, preprocessing, in_channels and num_classes "
                    "(train them with one recipe on one data set)"
                )


def ensemble_of(members: Sequence[Member], *, extra: dict[str, Any] | None = None) -> LoadedModel:
    """The members as one in-memory `LoadedModel` (what `load_checkpoint` gives for the file
    that `save_ensemble` writes of them); ValueError naming a member that does not fit."""
    names = [_member_name(m, i) for i, m in enumerate(members)]
    if not members:
        raise ValueError("an ensemble needs at least one member model")
    loaded = [_as_loaded(m, i) for i, m in enumerate(members)]
    _check_alike(loaded, names)
    first = loaded[0]
    model = Ensemble([_unwrap(m.model) for m in loaded]).eval()
    return LoadedModel(
        model,
        first.model_config,
        first.class_map,
        first.preprocess,
        dict(extra or {}),
        members=len(loaded),
    )


def ensemble_payload(
    members: Sequence[Member], *, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The plain-data dict that `save_ensemble` writes: each member's weights (on CPU, wrapper
    prefixes stripped), config and own ``extra``; the shared class map and preprocessing."""
    names = [_member_name(m, i) for i, m in enumerate(members)]
    if not members:
        raise ValueError("an ensemble needs at least one member model")
    loaded = [_as_loaded(m, i) for i, m in enumerate(members)]
    _check_alike(loaded, names)
    extra = dict(extra or {})
    _check_plain(extra, "extra")
    entries = []
    for i, member in enumerate(loaded):
        _check_plain(member.extra, f"members[{i}].extra")
        entries.append(
            {
                "state_dict": _clean_state_dict(_unwrap(member.model).state_dict()),
                "model_config": member.model_config.to_dict(),
                "extra": dict(member.extra),
            }
        )
    return {
        "format": ENSEMBLE_FORMAT,
        "members": entries,
        "class_map": loaded[0].class_map.to_dict(),
        "preprocess": loaded[0].preprocess.to_dict(),
        "extra": extra,
    }


def save_ensemble(
    path: str | os.PathLike, members: Sequence[Member], *, extra: dict[str, Any] | None = None
) -> None:
    """Write an ensemble file atomically (as `unet_core.checkpoint.save_checkpoint` writes a
    single model): a temporary file in the same folder, fsync, then rename."""
    write_atomic(path, ensemble_payload(members, extra=extra))


def ensemble_to_bytes(members: Sequence[Member], *, extra: dict[str, Any] | None = None) -> bytes:
    """An ensemble file as bytes (e.g. for a single S3 PUT); `load_checkpoint` reads it."""
    buffer = io.BytesIO()
    torch.save(ensemble_payload(members, extra=extra), buffer)
    return buffer.getvalue()


def _read_members(payload: dict[str, Any], name: str) -> list[LoadedModel]:
    require_keys(payload, _KEYS, name)
    entries = payload["members"]
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{name}: an ensemble file with no members; the file is incomplete")
    try:
        class_map = ClassMap.from_dict(payload["class_map"], source=name)
        preprocess = PreprocessConfig.from_dict(payload["preprocess"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: configs do not fit together: {exc}") from exc
    loaded = []
    for i, entry in enumerate(entries):
        where = f"{name} member {i}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: not a member entry ({type(entry).__name__})")
        require_keys(entry, _MEMBER_KEYS, where)
        config, model = rebuild_model(entry, where)
        extra = dict(entry.get("extra") or {})
        loaded.append(LoadedModel(model.eval(), config, class_map, preprocess, extra))
    _check_alike(loaded, [f"{name} member {i}" for i in range(len(loaded))])
    return loaded


def loaded_ensemble(
    payload: dict[str, Any], *, name: str, map_location: str | torch.device | None = "cpu"
) -> LoadedModel:
    """The `LoadedModel` of an ensemble file's payload (`load_checkpoint` calls this)."""
    members = _read_members(payload, name)
    loaded = ensemble_of(members, extra=dict(payload.get("extra") or {}))
    if isinstance(map_location, (str, torch.device)):
        loaded.model.to(map_location)
    return loaded


def read_members(source: Source) -> list[LoadedModel]:
    """Each model of a checkpoint on its own, in eval mode on the CPU: an ensemble file's
    members (each with its own ``extra``), or the one model of a single-model file."""
    name, payload = read_payload(source)
    if isinstance(payload, dict) and payload.get("format") == ENSEMBLE_FORMAT:
        return _read_members(payload, name)
    if not isinstance(source, (str, os.PathLike, bytes, bytearray)):
        source.seek(0)  # a stream, read once above
    return [_as_loaded(load_checkpoint(source), 0)]
