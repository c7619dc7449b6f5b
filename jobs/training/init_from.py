"""Where a run's weights start: ``--init-from`` (a registered version, a logged model, a run's
model or a checkpoint file) and ``--encoder-weights`` (`jobs.training.encoder_init`), read once
on the driver into a `Start`, and on every worker loaded after the seeded initialisation.

- The parent's architecture (`ModelConfig`, its encoder included) is the run's; a flag given
  explicitly with another value is refused naming both. Its preprocessing is the run's too
  (its normalisation is what the weights learnt).
- The same class names: every weight loads. Another class map: the head (``head.*``) keeps its
  fresh initialisation and every other weight loads; the log says so once.
- Lineage in both directions, as MLflow tags: the run (and, through `parent_tags`, the version
  it registers) names its parent (`PARENT_TAGS`); the parent version lists its children runs
  (`CHILDREN_TAG`).
- A resumed run (same --run-name, a checkpoint in storage) continues from its own checkpoint:
  resume wins, and the workers say so.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jobs.training.encoder_init import (
    EncoderWeights,
    load_pretrained,
    pretrained_preprocessing,
    read_encoder_weights,
)

if TYPE_CHECKING:
    from torch import nn

    from jobs.common.model_source import FetchedModel
    from jobs.training.config import TrainJobConfig
    from jobs.training.data_checks import TrainingData
    from unet_core.classes import ClassMap
    from unet_core.config import ModelConfig

log = logging.getLogger(__name__)

PARENT_TAGS = ("parent_model", "parent_version", "parent_run_id")
"""Tags of a run started --init-from, and of the version it registers: the parent's URI as
given, its registered version (empty for a checkpoint file) and the run that trained it."""
CHILDREN_TAG = "children_runs"
"""Tag of a parent version: the ids of the runs started from it, comma-separated."""
HEAD_PREFIX = "head."
"""State-dict keys of the 1x1 convolution that gives one logit per class."""
ARCHITECTURE_FLAGS = ("encoder", "base_width", "depth", "norm", "upsampling", "dropout")


class InitFromError(ValueError):
    """--init-from that cannot start this run: refused before any work (exit 2)."""

    exit_kind = "input"


def fetch_parent(uri: str, *, tracking_uri: str, endpoint_url: str | None) -> FetchedModel:
    """The parent model, resolved (an alias once), fetched and loaded on the driver."""
    from jobs.common.model_source import ModelSourceError, fetch_model

    try:
        parent = fetch_model(uri, tracking_uri=tracking_uri, endpoint_url=endpoint_url)
    except ModelSourceError as exc:
        raise InitFromError(f"--init-from: {exc}") from exc
    if not hasattr(parent.loaded.model, "encoder_parameters"):
        raise InitFromError(
            f"--init-from {uri}: {parent.resolved.uri_resolved} is an ensemble; start from one "
            "of its members (a single model's checkpoint or version)"
        )
    return parent


def with_parent_architecture(cfg: TrainJobConfig, parent: ModelConfig) -> TrainJobConfig:
    """``cfg`` with the parent's architecture (and input channels); a flag given explicitly
    with another value is refused, naming both."""
    conflicts = [
        f"--{name.replace('_', '-')} {getattr(cfg.model, name)} (the parent's: "
        f"{getattr(parent, name)})"
        for name in ARCHITECTURE_FLAGS
        if name in cfg.given and getattr(cfg.model, name) != getattr(parent, name)
    ]
    if "in_channels" in cfg.given and cfg.in_channels != parent.in_channels:
        conflicts.append(f"--in-channels {cfg.in_channels} (the parent's: {parent.in_channels})")
    if conflicts:
        raise InitFromError(
            f"--init-from {cfg.init_from}: the architecture is the parent's, and "
            f"{'; '.join(conflicts)} contradicts it; leave these flags out"
        )
    model = dataclasses.replace(parent, num_classes=cfg.model.num_classes)
    return dataclasses.replace(cfg, model=model, in_channels=parent.in_channels)


def keeps_head(parent: ClassMap, ours: ClassMap, *, uri: str) -> bool:
    """True when the class names (and so their count and order) are the parent's; otherwise
    the head is re-initialised, said in one log line naming both class lists."""
    if list(parent.names) == list(ours.names):
        return True
    log.warning(
        "--init-from %s: another class map (the parent's: %s; this run's: %s): the head is "
        "re-initialised, every other weight loads",
        uri,
        ", ".join(parent.names),
        ", ".join(ours.names),
    )
    return False


def load_parent_weights(model: nn.Module, checkpoint: bytes, *, keep_head: bool) -> str:
    """Load the parent checkpoint's weights into ``model`` (the head too when ``keep_head``);
    every other weight must fit. Returns the log line."""
    from unet_core.checkpoint import load_checkpoint

    state = load_checkpoint(checkpoint).model.state_dict()
    if not keep_head:
        state = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIX)}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a shape differs
        raise ValueError(f"--init-from: the parent's weights do not fit the model: {exc}") from exc
    wrong = [k for k in missing if keep_head or not k.startswith(HEAD_PREFIX)] + unexpected
    if wrong:
        raise ValueError(f"--init-from: the parent's weights do not fit the model: {wrong}")
    kept = "every weight" if keep_head else "every weight but the re-initialised head"
    return f"--init-from: loaded {kept} ({len(state)} tensors) from the parent"


def parent_tags(run_tags: dict[str, str]) -> dict[str, str]:
    """The parent tags of a run (`PARENT_TAGS`), to copy onto the version it registers."""
    return {k: run_tags[k] for k in PARENT_TAGS if run_tags.get(k)}


@dataclass
class Start:
    """The run's starting weights, read once on the driver (`prepare_start`)."""

    init_from: str | None = None
    """--init-from as given."""
    parent: FetchedModel | None = None
    encoder_weights: EncoderWeights | None = None
    keep_head: bool = True
    """False when the class map differs from the parent's (`keeps_head`)."""
    encoder_lr_scale: float = 1.0
    freeze_encoder_epochs: int = 0

    def preprocessing(self, cfg: TrainJobConfig, data: TrainingData) -> TrainingData:
        """``data`` with the run's preprocessing: the parent's, else fitted on the training
        images (with ImageNet's mean and std for pretrained weights on 8-bit images)."""
        from jobs.training.preprocess_fit import fit_training_preprocessing

        if self.parent is None:
            data = fit_training_preprocessing(cfg, data)
            pretrained = None
            if self.encoder_weights is not None and cfg.preprocessing == "auto":
                pretrained = pretrained_preprocessing(data.preprocess)
            if pretrained is None:
                return data
            log.info("pretrained encoder: ImageNet's input normalisation %s", pretrained.to_dict())
            return dataclasses.replace(data, preprocess=pretrained)
        preprocess = self.parent.loaded.preprocess
        if preprocess.channels != data.in_channels:
            raise InitFromError(
                f"--init-from {self.init_from}: the parent takes {preprocess.channels}-channel "
                f"images, these are {data.in_channels}-channel"
            )
        self.keep_head = keeps_head(
            self.parent.loaded.class_map, data.class_map, uri=self.init_from or ""
        )
        decode = dataclasses.replace(data.decode, pixel_values=preprocess.pixel_values)
        return dataclasses.replace(data, preprocess=preprocess, decode=decode)

    def params(self) -> dict[str, Any]:
        """Run params: the encoder, what --init-from pinned and the weights file."""
        out: dict[str, Any] = {
            "init_from": self.init_from,
            "encoder_lr_scale": self.encoder_lr_scale,
        }
        if self.parent is not None:
            out["init_from_resolved"] = self.parent.resolved.uri_resolved
            out["init_from_sha256"] = self.parent.sha256
            out["encoder"] = self.parent.loaded.model_config.encoder
        if self.encoder_weights is not None:
            out.update(self.encoder_weights.params())
        return out

    def loop_entry(self) -> dict[str, Any]:
        """The loop config's ``start``: the weights through the object store, not a path."""
        import ray

        return {
            "init_from": self.init_from,
            "parent": ray.put(self.parent.checkpoint) if self.parent else None,
            "keep_head": self.keep_head,
            "encoder_weights": ray.put(self.encoder_weights.data) if self.encoder_weights else None,
            "encoder_source": self.encoder_weights.source if self.encoder_weights else None,
            "encoder_lr_scale": self.encoder_lr_scale,
            "freeze_encoder_epochs": self.freeze_encoder_epochs,
        }

    def tag_run(self, tracking_uri: str, run_id: str) -> None:
        """Lineage: the parent on the run, the run among the parent version's children."""
        if self.parent is None:
            return
        from jobs.common.mlflow_store import mlflow_client
        from jobs.common.model_lineage import tag_model_version

        client, _ = mlflow_client(tracking_uri)
        resolved = self.parent.resolved
        tags = {
            "parent_model": self.init_from,
            "parent_version": resolved.version or "",
            "parent_run_id": resolved.run_id or "",
        }
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
        if resolved.name and resolved.version:
            current = client.get_model_version(resolved.name, resolved.version).tags
            children = [c for c in current.get(CHILDREN_TAG, "").split(",") if c]
            if run_id not in children:
                tag = ",".join([*children, run_id])
                tag_model_version(client, resolved.name, resolved.version, {CHILDREN_TAG: tag})


def prepare_start(cfg: TrainJobConfig, tracking_uri: str) -> tuple[TrainJobConfig, Start]:
    """Read --init-from / --encoder-weights once on the driver; ``cfg`` with the parent's
    architecture. Every refusal (a missing file, wrong keys, a contradicting flag) is here,
    before any work."""
    start = Start(
        init_from=cfg.init_from,
        encoder_lr_scale=cfg.effective_encoder_lr_scale,
        freeze_encoder_epochs=cfg.freeze_encoder_epochs,
    )
    if cfg.init_from is not None:
        start.parent = fetch_parent(
            cfg.init_from, tracking_uri=tracking_uri, endpoint_url=cfg.s3_endpoint_url
        )
        cfg = with_parent_architecture(cfg, start.parent.loaded.model_config)
        log.info(
            "--init-from %s: %s (sha256 %s), architecture %s",
            cfg.init_from,
            start.parent.resolved.uri_resolved,
            start.parent.sha256,
            cfg.model.to_dict(),
        )
    start.encoder_weights = read_encoder_weights(
        cfg.encoder_weights, cfg.model, endpoint_url=cfg.s3_endpoint_url
    )
    return cfg, start


# --- on the workers -----------------------------------------------------------------------------


def load_start(model: nn.Module, entry: dict[str, Any] | None, *, resuming: bool) -> list[str]:
    """Load the run's starting weights into ``model`` (after its seeded initialisation); the
    log lines of what loaded. A resumed run loads its own checkpoint instead."""
    if not entry or (entry.get("parent") is None and entry.get("encoder_weights") is None):
        return []
    import ray

    if resuming:
        what = "--init-from" if entry.get("parent") is not None else "--encoder-weights"
        return [f"resuming from the run's own checkpoint: {what} is not loaded (resume wins)"]
    if entry.get("parent") is not None:
        parent = ray.get(entry["parent"])
        return [load_parent_weights(model, parent, keep_head=bool(entry.get("keep_head", True)))]
    data = ray.get(entry["encoder_weights"])
    return [load_pretrained(model, data, source=str(entry.get("encoder_source")))]


def encoder_settings(entry: dict[str, Any] | None) -> tuple[float, int]:
    """(encoder learning-rate scale, frozen epochs) of the loop config's ``start``."""
    entry = entry or {}
    return float(entry.get("encoder_lr_scale", 1.0)), int(entry.get("freeze_encoder_epochs", 0))
