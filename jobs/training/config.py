"""Configuration of the training job: one typed dataclass; the CLI and config files map onto it.

`TrainJobConfig` composes the library's `TrainConfig` (optimisation) and `ModelConfig`
(architecture; `in_channels` and `num_classes` come from the data) with the job's own fields.
Every field becomes a flag (`--batch-size`) whose help is the field's docstring; `--config FILE`
(JSON, or YAML when PyYAML is installed) sets the same fields by name; flags override the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from dataclasses import dataclass, field
from typing import Any

from jobs.common.cli import (
    OldSpelling,
    add_field_flag,
    add_old_flags,
    base_type,
    command_name,
    field_docs,
    load_config_file,
    take_old_flags,
)
from jobs.common.decode_flags import DecodeFlags
from jobs.common.vocabulary import (
    DEVICES,
    device_problems,
    device_request,
    normal_workers,
    parse_workers,
)
from jobs.training.encoder_init import StartingWeights
from jobs.training.folds import FoldFlags
from unet_core.config import SCHEMES, ModelConfig, TrainConfig

DEMO_PRESET: dict[str, Any] = {
    "epochs": 8,
    "batch_size": 4,
    "crop_size": 0,
    "lr": 1e-2,
    "warmup_epochs": 1.0,
    "base_width": 16,
    "depth": 3,
    "norm": "group",
    "augment": False,
}
"""Defaults used when --data is omitted: a tiny CPU model on the generated demo set, so that
`python jobs/train.py` ends in about a minute on a laptop. Flags and --config still override."""

MODEL_FIELDS_FROM_DATA = ("in_channels", "num_classes")
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
AMP_MODES = ("auto", "bf16", "off")


def _device(value: bool, _given: dict) -> dict[str, Any]:
    return {"device": "gpu" if value else "cpu"}


OLD_SPELLINGS = (
    OldSpelling(
        "--use-gpu",
        "--device gpu",
        _device,
        kind=bool,
        const=True,
        key="use_gpu",
        new_key="device: gpu (or cpu)",
    ),
    OldSpelling("--no-use-gpu", "--device cpu", _device, kind=bool, const=False, key=None),
    OldSpelling("--no-gpu", "--device cpu", _device, kind=bool, const=False, key=None),
    OldSpelling(
        "--max-bad-pairs", "--max-failed-fraction X", lambda v, _: {"max_bad_pairs": v}, kind=int
    ),
)
"""Flags (and config keys) of earlier releases that still work, with a notice."""
NOT_FLAGS = ("max_bad_pairs",)
"""Fields set only through an old spelling (OLD_SPELLINGS)."""


def amp_flag(mode: str) -> bool | None:
    """``--amp`` as the ``enabled`` argument of `unet_core.precision.autocast_dtype`."""
    return {"auto": None, "bf16": True, "off": False}[mode]


@dataclass
class TrainJobConfig(FoldFlags, StartingWeights, DecodeFlags):
    """Everything `jobs/train.py` needs; `train` and `model` are the library's own configs."""

    data: str | None = None
    """Data root (local folder or s3://bucket/prefix) holding images/, masks/ and classes.json.
    Omitted: a synthetic demo set is generated into $UNET_RAY_CACHE (default ~/.cache/unet-ray)
    and the tiny demo preset applies."""
    val_data: str | None = None
    """Separate validation root (same layout). Omitted: a deterministic stem-hash split of --data
    (--val-fraction)."""
    group_by: str | None = None
    """Regular expression over each pair's key (its path without extension): pairs whose match
    (its first group, or the whole match) is the same stay on one side of the --val-fraction split,
    e.g. '^(.*)_\\d+$' for the frames of a sequence; `names`: blocks of neighbouring numbered names
    as `unet-plan` groups them (docs/planning.md); split.json records the groups."""
    class_map: str | None = None
    """Class map JSON file (local or s3://); default: classes.json at the data root."""
    s3_endpoint_url: str | None = None
    """S3-compatible endpoint (MinIO, a local server); default: $AWS_ENDPOINT_URL."""
    plan: str | None = None
    """auto: plan the run for --budget-minutes from the data's fingerprint and a measured step time, as unet-plan does (docs/planning.md); the plan's values are defaults that flags and --config override. The fingerprint and the recipe are logged with the run."""
    budget_minutes: float | None = None
    """Minutes of training --plan auto sizes the run to (epochs, crops, width)."""
    in_channels: int | None = None
    """Model input channels (1 grayscale, 3 RGB, N bands); default: inferred from the images."""
    preprocessing: str = "auto"
    """How pixels become the model's input, saved with the model: auto (from the training images: 8-bit images scale_zscore, wider or float ones clip_zscore), scale_zscore (pixel / 255, then the set's mean and std), clip_zscore (images in their own values, clipped to the set's 0.5/99.5 percentiles, then z-scored), or legacy_uint8 (8-bit decode, mean 0.5 / std 0.25: models before this setting). The statistics come from a seeded sample of up to 200 training images."""
    channel_names: str | None = None
    """Comma-separated names of the image channels, e.g. red,green,blue,nir (saved with the model; red,green,blue turns colour augmentations on); default: the "channels" list of classes.json, else from the count (3 RGB, 1 gray, else band0..)."""
    device: str = "auto"
    """Where the training workers run: cpu, gpu, or auto (GPU when this machine has CUDA on a
    local Ray, or the cluster has GPUs now, or its autoscaler can launch GPU nodes; else CPU)."""
    gpus_per_worker: float = 1.0
    """GPUs reserved per training worker when they run on GPU (a fraction lets workers share a
    GPU)."""
    cpus_per_worker: float | None = None
    """Logical CPUs reserved per training worker; default: 1 on a cluster; on a local Ray at most
    1, a share of what is left once a quarter of its CPUs (at least 1) is kept for Ray Data
    tasks."""
    num_workers: int | str = 2
    """Ray Train workers (DDP processes): N, or MIN-MAX for elastic training (starts with as many
    as the cluster has room for, at least MIN; grows or shrinks with the cluster, resuming from
    the last checkpoint). The per-worker batch is fixed: the global batch is batch_size * the
    workers running."""
    torch_threads: int = 0
    """torch intra-op threads per worker; 0 = Ray's default (the worker's CPU count)."""
    amp: str = "auto"
    """Mixed precision of training and validation: auto (bf16 autocast on CUDA and on CPUs with native bf16, AVX512-BF16 or AMX, about 2x faster there; fp32 on other CPUs), bf16 (forced, also where it is slower), or off (fp32)."""
    ray_address: str | None = None
    """Ray cluster to connect to; default: $RAY_ADDRESS, else a local Ray is started."""
    shared_fs: bool = False
    """Local paths (--data, --storage-path, a sqlite tracking URI...) are on a filesystem every
    node mounts at the same path (NFS, EFS, FSx): allow them on a multi-node cluster."""
    dry_run: bool = False
    """Resolve everything a run would (data, split, device, workers, storage, tracking) and print
    it as one JSON object; train nothing, write nothing. Exit 2 when it lists problems."""
    run_name: str | None = None
    """Name of the run in Ray Train storage and MLflow; reusing a name resumes that run from its
    last checkpoint. Default: unet-<timestamp>."""
    storage_path: str | None = None
    """Where Ray Train keeps checkpoints (local or s3://); default: $UNET_RAY_CACHE/runs."""
    max_failures: int = 2
    """Worker-group failures to recover from (restart from the last checkpoint); -1 = unlimited."""
    keep_checkpoints: int = 2
    """Checkpoints to keep, best by val_miou (the latest is always kept for resuming)."""
    cache_data: bool | None = None
    """Keep decoded images in the Ray object store across epochs; default: when they fit in a fifth
    of it."""
    check_limit: int = 1000
    """Data sets up to this many pairs are validated in full on the driver; larger ones on a seeded
    sample there, then in Ray Data tasks."""
    max_failed_fraction: float = 0.0
    """Fraction of the pairs (training and validation sets) whose image or mask may fail to read
    or decode during training and be left out; above it the job fails naming them (0: any such
    pair fails the job). Logged as bad_pairs."""
    max_bad_pairs: int | None = None
    """A count instead of --max-failed-fraction (the old --max-bad-pairs N); not a flag of its
    own."""
    full_check: bool = True
    """For sets above --check-limit, also check every mask in parallel Ray Data tasks before
    training."""
    experiment: str = "unet"
    """MLflow experiment of the run (in the store of --tracking-uri)."""
    tracking_uri: str | None = None
    """MLflow tracking URI; default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db."""
    system_metrics: bool | None = None
    """Every worker logs its machine's CPU, memory, disk, network (and GPU) use to the run
    (system/worker_<rank>/... with several workers; every
    $MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL s, default 10); default: on when the job runs on a
    cluster (--ray-address, $RAY_ADDRESS, ray job submit), off on a local Ray."""
    register_as: str = "unet"
    """Registered model name in the MLflow Model Registry."""
    alias: str = "champion"
    """Alias moved to the new version when it passes the gate (--min-miou, and not worse than the
    version holding it, both scored on this run's validation pairs)."""
    min_miou: float = 0.0
    """Validation mIoU a version needs to receive the alias."""
    force_alias: bool = False
    """Move the alias even when the new version scores below the version holding it, or that
    version cannot be compared with it (another class map or input channels)."""
    demo_images: int = 32
    """Images in the generated demo set (only without --data)."""
    demo_size: int = 64
    """Side in pixels of the generated demo images (only without --data)."""
    log_level: str = "INFO"
    """Logging level of the driver and the workers."""
    train: TrainConfig = field(default_factory=TrainConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    given: tuple[str, ...] = field(default=(), compare=False, repr=False)
    """Fields set by a flag or --config (not a flag): what --plan auto leaves alone."""

    def __post_init__(self) -> None:
        problems = self.decode_problems() + self.fold_problems()
        problems += self.start_problems(self.model.encoder)
        try:
            self.num_workers = normal_workers(self.num_workers)  # "4" -> 4, " 2 - 8" -> "2-8"
        except ValueError as exc:
            problems.append(str(exc))
        problems += device_problems(self.device, self.gpus_per_worker)
        if self.group_by is not None:
            try:
                re.compile(self.group_by)
            except re.error as exc:
                problems.append(
                    f"--group-by {self.group_by!r} is not a regular expression ({exc}); "
                    "e.g. '^(.*)_\\d+$' groups names by what comes before a trailing number"
                )
        plan, budget = self.plan, self.budget_minutes  # both or neither, budget > 0
        wrong = budget is not None and budget <= 0
        if wrong or (plan, budget is None) not in ((None, True), ("auto", False)):
            problems.append(
                f"--plan auto and --budget-minutes M (> 0) go together; got {plan}, {budget}"
            )
        if self.in_channels is not None and self.in_channels < 1:
            problems.append(f"--in-channels must be >= 1, got {self.in_channels}")
        if self.preprocessing not in ("auto", *SCHEMES):
            problems.append(f"--preprocessing must be auto or {'/'.join(SCHEMES)}")
        if self.cpus_per_worker is not None and self.cpus_per_worker <= 0:
            problems.append(f"--cpus-per-worker must be > 0, got {self.cpus_per_worker}")
        if self.max_failures < -1:
            problems.append(f"--max-failures must be >= -1, got {self.max_failures}")
        if self.keep_checkpoints < 1:
            problems.append(f"--keep-checkpoints must be >= 1, got {self.keep_checkpoints}")
        if not 0.0 <= self.min_miou <= 1.0:
            problems.append(f"--min-miou must be in [0, 1], got {self.min_miou}")
        if self.run_name is not None and not _RUN_NAME.match(self.run_name):
            problems.append(
                f"--run-name {self.run_name!r} must be 1-128 letters, digits, '.', '_' or '-'"
            )
        if self.check_limit < 1:
            problems.append(f"--check-limit must be >= 1, got {self.check_limit}")
        if not 0.0 <= self.max_failed_fraction <= 1.0:
            problems.append(
                f"--max-failed-fraction must be in [0, 1], got {self.max_failed_fraction}"
            )
        if self.max_bad_pairs is not None and self.max_bad_pairs < 0:
            problems.append(f"--max-bad-pairs must be >= 0, got {self.max_bad_pairs}")
        if self.demo_images < 4 or self.demo_size < 16:
            problems.append("--demo-images must be >= 4 and --demo-size >= 16")
        if self.torch_threads < 0:
            problems.append(f"--torch-threads must be >= 0, got {self.torch_threads}")
        if self.amp not in AMP_MODES:
            problems.append(f"--amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def worker_range(self) -> tuple[int, int]:
        """(MIN, MAX) Ray Train workers; MIN == MAX for a fixed count."""
        return parse_workers(self.num_workers)

    @property
    def use_gpu(self) -> bool | None:
        """--device as a request: True (gpu), False (cpu), None (auto, decided on the driver)."""
        return device_request(self.device)

    def allowed_bad_pairs(self, pairs: int) -> int:
        """Pairs that may fail to decode out of ``pairs``: --max-bad-pairs when given, else
        --max-failed-fraction of them (failed / pairs above the fraction fails the job)."""
        if self.max_bad_pairs is not None:
            return self.max_bad_pairs
        return int(self.max_failed_fraction * pairs + 1e-9)

    def to_flat(self) -> dict[str, Any]:
        """All fields in one flat dict, as the flags name them (for logging and files)."""
        out = {f.name: getattr(self, f.name) for f in _job_fields()}
        if out["max_bad_pairs"] is None:  # set only by the old --max-bad-pairs
            del out["max_bad_pairs"]
        out.update(self.train.to_dict())
        out.update(
            {k: v for k, v in self.model.to_dict().items() if k not in MODEL_FIELDS_FROM_DATA}
        )
        return out

    @classmethod
    def from_flat(cls, values: dict[str, Any]) -> TrainJobConfig:
        """Build from flat field names; unknown names are an error that lists the known ones."""
        known = {name for name, *_ in _all_fields()}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; known keys: {sorted(known)}")
        job = {f.name for f in _job_fields()}
        train_names = {f.name for f in dataclasses.fields(TrainConfig)}
        return cls(
            **{k: v for k, v in values.items() if k in job},
            train=TrainConfig(**{k: v for k, v in values.items() if k in train_names}),
            model=ModelConfig(
                **{k: v for k, v in values.items() if k not in job and k not in train_names}
            ),
        )


# --- fields, docstrings and types ------------------------------------------------------------

_NOT_JOB_FIELDS = ("train", "model", "given")


def _job_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(TrainJobConfig) if f.name not in _NOT_JOB_FIELDS]


def _all_fields() -> list[tuple[str, Any, Any, str, str]]:
    """(name, type, default, help, section) for every settable field, job fields first."""
    rows = []
    for cls, section, skip in (
        (TrainJobConfig, "job", _NOT_JOB_FIELDS),
        (TrainConfig, "training", ()),
        (ModelConfig, "model", MODEL_FIELDS_FROM_DATA),
    ):
        hints = typing.get_type_hints(cls)
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            if f.name in skip:
                continue
            rows.append((f.name, hints[f.name], f.default, docs.get(f.name, ""), section))
    return rows


# --- argparse and config files ------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    preset = ", ".join(f"{k}={v}" for k, v in DEMO_PRESET.items())
    parser = argparse.ArgumentParser(
        prog=command_name("jobs/train.py"),
        description=(
            "Train a UNet with Ray Train (DDP) on data read by Ray Data from a folder or S3; "
            "track the run in MLflow, register the model and move an alias when it passes the "
            "gate. The last line of stdout is a JSON summary. Without --data, a demo set is "
            f"generated and the demo preset applies ({preset})."
        ),
        argument_default=argparse.SUPPRESS,  # absent flags stay absent: the file can set them
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="JSON or YAML file with any of the fields below (flat names, e.g. batch_size: 8, or "
        "under train: and model: sections, as in configs/*.yaml); flags given on the command "
        "line override it",
    )
    groups = {
        "job": parser.add_argument_group("data, cluster, run and registry"),
        "training": parser.add_argument_group("training (unet_core TrainConfig)"),
        "model": parser.add_argument_group("architecture (unet_core ModelConfig)"),
    }
    for name, tp, default, doc, section in _all_fields():
        if name in NOT_FLAGS:
            continue
        group = groups[section]
        text = doc if default is None else f"{doc} (default: {default})"
        metavar = {int: "N", float: "X"}.get(base_type(tp)[0], "TEXT")
        metavar = {"num_workers": "N|MIN-MAX", "device": "|".join(DEVICES)}.get(name, metavar)
        add_field_flag(group, name, tp, text, metavar=metavar)
    add_old_flags(parser, OLD_SPELLINGS)
    return parser


def resolve_config(
    cli: dict[str, Any], file_values: dict[str, Any] | None = None
) -> TrainJobConfig:
    """Defaults < demo preset (no --data) < config file < command line."""
    values = dict(file_values or {})
    values.update(cli)
    given = tuple(sorted(values))
    if values.get("data") is None:
        values = {**DEMO_PRESET, **values}
    return dataclasses.replace(TrainJobConfig.from_flat(values), given=given)


def parse_args(argv: list[str] | None = None) -> TrainJobConfig:
    """Parse the command line (and --config); invalid values exit 2 with the reason."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    config_path = args.pop("config", None)
    try:
        args = take_old_flags(args, OLD_SPELLINGS)
        file_values = (
            load_config_file(
                config_path,
                {name: tp for name, tp, *_ in _all_fields()},
                sections=("train", "model"),
                prog=command_name("jobs/train.py"),
                old=OLD_SPELLINGS,
            )
            if config_path
            else {}
        )
        return resolve_config(args, file_values)
    except ValueError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits
