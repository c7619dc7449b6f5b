"""K-fold cross-validation: the flags (`FoldFlags`, a base of the training config) and the
folds themselves (`fold_pairs`: K disjoint sets of whole groups that cover the data).

A case's group is that of the split: ``--group-by``'s match, or with ``--group-by names`` (which
``--plan auto`` sets when names share groups) the name groups of `jobs.planning.names` (blocks of
neighbouring frames or slices), else the case alone. Groups are dealt largest first, each to the fold with the fewest pairs so far
(ties broken by a seeded hash of the fold and the group), so the folds are balanced by pair
count, deterministic for a seed, and a group is never on two sides. The runs that train on them
are `jobs.training.fold_runs`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from unet_core.data import Pair, pair_group

GroupBy = str | re.Pattern[str] | Mapping[str, str] | None
"""A regular expression over the keys (`unet_core.data.pair_group`), a mapping key -> group
(``--group-by names``: `jobs.planning.names.grouping`), or None (every case its own group)."""


class FoldError(ValueError):
    """The data cannot be cut into the folds asked for; the message says what to change."""

    exit_kind = "data"  # a job ends with exit code 2 (jobs.common.exits)


@dataclass
class FoldFlags:
    """K-fold settings of the training job (a base class of its config)."""

    folds: int = 0
    """Cross-validation: train K models (K >= 2), model i validated on fold i of K group-aware folds (whole --group-by groups; --plan auto groups neighbouring names) and trained on the others, as concurrent Ray Train runs when the cluster has room for more than one (else one after another), each a child MLflow run of one parent run; reports the out-of-fold score (oof_mean_iou) and, with --register-as, registers the K models as one version of an ensemble model. Replaces --val-fraction; 0 = one model (docs/ensembles.md)."""
    fold: int | None = None
    """With --folds K: train only fold i (0..K-1) as a normal single-model run, registered only when --register-as is given."""
    oof_tta: str = "none"
    """Test-time augmentation of the out-of-fold scoring of --folds (as evaluate's --tta; set it to the recipe's evaluate tta)."""

    def fold_problems(self) -> list[str]:
        """What is wrong with these flags (each with the fix); [] when they are fine."""
        from unet_core.tta import TTA_MODES

        problems = []
        if self.folds == 1 or self.folds < 0:
            problems.append(f"--folds must be 0 (one model) or >= 2, got {self.folds}")
        if self.fold is not None and not self.folds:
            problems.append("--fold i needs --folds K (the fold of which split)")
        elif self.fold is not None and not 0 <= self.fold < self.folds:
            problems.append(f"--fold must be in 0..{self.folds - 1} with --folds {self.folds}")
        if self.folds and getattr(self, "val_data", None):
            problems.append(
                "--val-data and --folds exclude each other: each fold is validated on its own "
                "held-out part of --data; leave --val-data out"
            )
        if self.oof_tta not in TTA_MODES:
            problems.append(f"--oof-tta must be one of {', '.join(TTA_MODES)}")
        return problems


def _group_of(key: str, group_by: GroupBy) -> str:
    if isinstance(group_by, Mapping):
        return group_by.get(key, key)
    return pair_group(key, group_by)


def _describe(group_by: GroupBy) -> str | None:
    if isinstance(group_by, Mapping):
        return "names"
    return group_by.pattern if isinstance(group_by, re.Pattern) else group_by


def _tie_break(seed: int, fold: int, group: str) -> str:
    return hashlib.sha1(f"{seed}:{fold}:{group}".encode()).hexdigest()


def pair_groups(pairs: Sequence[Pair], group_by: GroupBy) -> dict[str, str]:
    """key -> group of every pair."""
    return {p.key: _group_of(p.key, group_by) for p in pairs}


def fold_pairs(pairs: Sequence[Pair], k: int, *, seed: int, group_by: GroupBy) -> list[list[Pair]]:
    """K disjoint folds (each sorted by key) that together hold every pair, whole groups per fold,
    balanced by pair count: groups largest first (ties by name), each into the fold with the fewest
    pairs (ties by a hash of seed, fold and group). FoldError when there are fewer groups than K."""
    if k < 2:
        raise FoldError(f"--folds must be >= 2, got {k}")
    groups = pair_groups(pairs, group_by)
    members: dict[str, list[Pair]] = {}
    for p in sorted(pairs, key=lambda p: p.key):
        members.setdefault(groups[p.key], []).append(p)
    if len(members) < k:
        how = "--group-by groups" if group_by is not None else "cases"
        raise FoldError(
            f"{len(members)} {how} cannot make {k} folds (every fold holds whole groups); "
            f"lower --folds to at most {len(members)}, add data, or group more finely"
        )
    folds: list[list[Pair]] = [[] for _ in range(k)]
    for group in sorted(members, key=lambda g: (-len(members[g]), g)):
        target = min(range(k), key=lambda i: (len(folds[i]), _tie_break(seed, i, group)))
        folds[target].extend(members[group])
    return [sorted(fold, key=lambda p: p.key) for fold in folds]


def fold_split_record(
    folds: Sequence[Sequence[Pair]], fold: int, group_by: GroupBy, root: str
) -> dict[str, Any]:
    """split.json of the run of fold ``fold``: its fold, the groups and keys on each side."""
    val = list(folds[fold])
    train = [p for i, f in enumerate(folds) if i != fold for p in f]
    groups = pair_groups([*train, *val], group_by)
    return {
        "root": root,
        "val_root": root,
        "val_source": "fold",
        "fold": fold,
        "folds": len(folds),
        "group_by": _describe(group_by),
        "train": sorted(p.key for p in train),
        "val": sorted(p.key for p in val),
        "train_groups": sorted({groups[p.key] for p in train}),
        "val_groups": sorted({groups[p.key] for p in val}),
    }
