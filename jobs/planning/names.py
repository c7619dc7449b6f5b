"""Groups of near-duplicate names: frames of one sequence, slices of one stack.

A name (a pair's key) that ends in a number is split into its prefix and that number
(``0016E5_07959`` -> ``0016E5_`` and 7959; ``stack/slice_03`` -> ``stack/slice_`` and 3). Names
with one prefix form a sequence; within a sequence, numbers in order form contiguous runs (a new
run starts where the step exceeds `GAP_FACTOR` times the sequence's median step), and a run is
cut into blocks of `block_size` consecutive names, so that a single long stack still gives
enough groups to split. A name without a trailing number, or alone under its prefix, is a group
of its own. Neighbouring frames then fall in one group, and a split by group keeps them on one
side (`unet_core.data.split_pairs` with a grouping).
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Sequence

TARGET_GROUPS = 20
"""Blocks are sized so that the numbered names make about this many groups (or more): enough
for a validation fraction of 0.1-0.2 to take whole groups."""
GAP_FACTOR = 3.0
"""A step above this many times a sequence's median step starts a new run (a gap in the
recording, or another stack under the same prefix)."""
NAMES = "names"
"""`--group-by names`: group by these rules (blocks of neighbouring numbered names) instead of a
regular expression."""
_TRAILING_NUMBER = re.compile(r"^(?P<prefix>.*?)(?P<number>\d+)$")


def split_name(key: str) -> tuple[str, int] | None:
    """(prefix, number) of a name ending in digits; None for a name without them."""
    found = _TRAILING_NUMBER.match(key)
    if found is None:
        return None
    return found["prefix"], int(found["number"])


def block_size(numbered: int, target_groups: int = TARGET_GROUPS) -> int:
    """Names per block: numbered / target_groups, rounded up (1, no grouping, for up to
    target_groups names)."""
    return max(1, math.ceil(numbered / target_groups))


def _runs(numbers: Sequence[int]) -> list[list[int]]:
    """Sorted numbers of one sequence cut where the step exceeds GAP_FACTOR x the median."""
    if len(numbers) < 2:
        return [list(numbers)]
    steps = [b - a for a, b in zip(numbers, numbers[1:], strict=False)]
    typical = max(1, statistics.median(steps))
    runs = [[numbers[0]]]
    for step, number in zip(steps, numbers[1:], strict=True):
        if step > GAP_FACTOR * typical:
            runs.append([])
        runs[-1].append(number)
    return runs


def group_names(keys: Iterable[str], *, block: int | None = None) -> dict[str, str]:
    """key -> group label (``<prefix><first>-<last>`` for a block of a sequence, the key itself
    otherwise). ``block``: names per block; default `block_size` of the numbered names."""
    keys = sorted(set(keys))
    sequences: dict[str, dict[int, list[str]]] = {}
    groups: dict[str, str] = {}
    for key in keys:
        parts = split_name(key)
        if parts is None:
            groups[key] = key
        else:
            sequences.setdefault(parts[0], {}).setdefault(parts[1], []).append(key)
    numbered = len(keys) - len(groups)
    block = block or block_size(numbered)
    for prefix, by_number in sequences.items():
        for run in _runs(sorted(by_number)):
            for start in range(0, len(run), block):
                chunk = run[start : start + block]
                members = [k for n in chunk for k in by_number[n]]
                if len(members) == 1:
                    groups[members[0]] = members[0]
                    continue
                first, last = (by_number[chunk[0]][0], by_number[chunk[-1]][0])
                label = f"{prefix}{first[len(prefix) :]}-{last[len(prefix) :]}"
                groups.update((k, label) for k in members)
    return groups


def grouping(keys: Iterable[str], group_by: str | None) -> str | dict[str, str] | None:
    """What a split groups by: with `NAMES`, the key -> group mapping of `group_names` over
    ``keys`` (the whole listing, so a block never depends on the split); else ``group_by`` (a
    regular expression, or None: every case its own group)."""
    return group_names(keys) if group_by == NAMES else group_by


def summarise_groups(keys: Sequence[str], *, examples: int = 3) -> dict:
    """The fields of `jobs.planning.fingerprint.NameGroups` for ``keys``."""
    numbered = [k for k in keys if split_name(k) is not None]
    block = block_size(len(numbered))
    groups = group_names(keys, block=block)
    sizes: dict[str, int] = {}
    for label in groups.values():
        sizes[label] = sizes.get(label, 0) + 1
    shared = sorted((label for label, n in sizes.items() if n > 1), key=lambda g: (-sizes[g], g))
    return {
        "numbered_fraction": round(len(numbered) / len(keys), 6) if keys else 0.0,
        "sequences": len({split_name(k)[0] for k in numbered}),
        "block": block,
        "groups": len(sizes),
        "grouped_names": sum(sizes[g] for g in shared),
        "largest_group": max(sizes.values(), default=0),
        "examples": shared[:examples],
    }
