"""Configuration of `unet-tune`: the train job's whole config (the same flags, --config recipe
and data) plus the search's own flags."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from jobs.common.cli import command_name
from jobs.training.config import TrainJobConfig, build_parser, parse_args

METRICS: dict[str, tuple[str, str]] = {
    "val_mean_iou": ("val_miou", "max"),
    "val_mean_dice": ("val_mean_dice", "max"),
    "val_loss": ("val_loss", "min"),
}
"""--metric choices: (the key the training loop reports each epoch, Tune's mode)."""
REDUCTION_FACTOR = 2
"""ASHA's reduction factor: at each rung (grace, 2 x grace, 4 x grace ... epochs) a trial
continues only when it is in the better half of the trials that reached that rung before it."""


@dataclass
class TuneJobConfig:
    """Everything `jobs/tune.py` needs: one train job config every trial starts from, and the
    search."""

    train: TrainJobConfig
    """The train job's config (flags and --config, as jobs/train.py takes them); each trial
    overrides the settings its sample draws."""
    search_space: str | None = None
    """YAML or JSON file declaring the settings to search (docs/tuning.md); default: lr
    log-uniform 5e-4..5e-3, base_width 8/16/24 (32/48/64 on GPU), class_balance 0/0.5,
    augment_strength uniform 0.5..1.5."""
    trials: int = 8
    """Samples drawn from the space (a grid dimension runs every one of its values per sample)."""
    max_concurrent_trials: int | None = None
    """Trials running at once; default: as many as the cluster's CPUs (GPUs) hold now, at least 1."""
    grace_epochs: int = 1
    """ASHA's grace period: epochs every trial runs before it may be stopped early."""
    metric: str = "val_mean_iou"
    """What ASHA compares and the best trial is chosen by: val_mean_iou (max), val_mean_dice
    (max) or val_loss (min)."""
    given: tuple[str, ...] = field(default=(), compare=False, repr=False)
    """Search flags given on the command line."""

    def __post_init__(self) -> None:
        problems = []
        if self.trials < 1:
            problems.append(f"--trials must be >= 1, got {self.trials}")
        if self.max_concurrent_trials is not None and self.max_concurrent_trials < 1:
            problems.append(
                f"--max-concurrent-trials must be >= 1, got {self.max_concurrent_trials}"
            )
        if not 1 <= self.grace_epochs <= self.train.train.epochs:
            problems.append(
                f"--grace-epochs must be in 1..--epochs ({self.train.train.epochs}), got "
                f"{self.grace_epochs}"
            )
        if self.metric not in METRICS:
            problems.append(f"--metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def report_key(self) -> str:
        """The loop's metric --metric names (`val_miou` for val_mean_iou)."""
        return METRICS[self.metric][0]

    @property
    def mode(self) -> str:
        return METRICS[self.metric][1]


_SEARCH_FLAGS = {
    "search_space": ("--search-space", str, "FILE"),
    "trials": ("--trials", int, "N"),
    "max_concurrent_trials": ("--max-concurrent-trials", int, "N"),
    "grace_epochs": ("--grace-epochs", int, "N"),
    "metric": ("--metric", str, "|".join(METRICS)),
}


def _add_search_flags(parser: argparse.ArgumentParser) -> None:
    from jobs.common.cli import field_docs

    docs = field_docs(TuneJobConfig)
    defaults = {"trials": 8, "grace_epochs": 1, "metric": "val_mean_iou"}
    group = parser.add_argument_group("search (Ray Tune with ASHA)")
    for name, (flag, kind, metavar) in _SEARCH_FLAGS.items():
        text = docs[name] + (f" (default: {defaults[name]})" if name in defaults else "")
        group.add_argument(flag, dest=name, type=kind, metavar=metavar, help=text)


def build_tune_parser() -> argparse.ArgumentParser:
    """The train job's parser (every flag, --config) with the search flags."""
    parser = build_parser()
    parser.prog = command_name("jobs/tune.py")
    parser.description = (
        "Search training settings with Ray Tune and ASHA on the cluster: every trial is a Ray "
        "Train run of the train job's loop, an MLflow child run of one parent run; weak trials "
        "stop early, the best trial's checkpoint is registered through the train job's alias "
        "gate. Takes every flag of jobs/train.py (the base every trial starts from) and "
        "--seed seeds the trials and the search's sampling. The last line of stdout is a JSON "
        "summary."
    )
    _add_search_flags(parser)
    return parser


def parse_tune_args(argv: list[str] | None = None) -> TuneJobConfig:
    """Parse the command line: the search flags here, the rest as jobs/train.py parses them."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_tune_parser()
    parser.parse_args(argv)  # --help, unknown flags and wrong types, named for this job
    search_only = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    for name, (flag, kind, _) in _SEARCH_FLAGS.items():
        search_only.add_argument(flag, dest=name, type=kind)
    search, rest = search_only.parse_known_args(argv)
    train = parse_args(rest)
    try:
        return TuneJobConfig(train=train, given=tuple(sorted(vars(search))), **vars(search))
    except ValueError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits
