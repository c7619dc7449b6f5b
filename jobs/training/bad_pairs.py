"""Image/mask pairs that fail to read or decode in Ray Data tasks during training: recorded,
counted over the whole run and bounded by --max-failed-fraction.

The decode tasks (`jobs.training.datasets.decode_pairs`) record each failed pair, with its
error, in one small actor per Ray job (a `BadPairLedger`, created by the driver before the
datasets and found by name). Counting there rather than in the workers' batches keeps the
count exact: rows that Ray Data decodes but never hands to a worker (the remainder an equal
training split drops, decoded data cached before the first epoch) are counted too, and a
retried task counts a pair once. Every rank reads the count at the end of an epoch, after
all ranks have drained their shards, and all ranks stop together once it is above the bound;
the driver then fails the job naming the pairs (`BadPairsError`), so Ray Train never retries
a failure that a retry cannot fix.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import ray
import torch
from ray.actor import ActorHandle
from ray.exceptions import ActorAlreadyExistsError

from jobs.training.collectives import all_reduce
from jobs.training.data_checks import DataValidationError
from unet_core.messages import SHOWN, shorten

MAX_EXAMPLES = SHOWN
"""Bad pairs named in an error message and in the job's JSON summary."""


class BadPairLedger:
    """The pairs that failed, by pair (its image URI), each with its first error; run as a
    Ray actor (`open_ledger`)."""

    def __init__(self) -> None:
        self._errors: dict[str, str] = {}

    def record(self, errors: dict[str, str]) -> None:
        for pair, error in errors.items():
            self._errors.setdefault(pair, error)  # a retried task keeps the first error

    def errors(self) -> dict[str, str]:
        return dict(self._errors)

    def count(self) -> int:
        return len(self._errors)


def ledger_name() -> str:
    """The ledger's actor name: one per Ray job (the driver, its Ray Data tasks and its Ray
    Train workers share the job id)."""
    return f"unet_ray.bad_pairs.{ray.get_runtime_context().get_job_id()}"


_OPEN: dict[str, ActorHandle] = {}
"""The driver's handle of its job's ledger, by name. It is what keeps the actor alive: handles
found by name do not, and the datasets drop theirs once materialised."""


_SHARED: set[str] = set()
"""Ledger names that runs started now share (`shared_ledger`)."""


@contextlib.contextmanager
def shared_ledger() -> Iterator[None]:
    """Runs started inside share one new ledger (the fold runs of one set, which may run at
    once: `jobs.training.fold_runs`): a pair that fails counts once for the set."""
    name = ledger_name()
    open_ledger()
    _SHARED.add(name)
    try:
        yield
    finally:
        _SHARED.discard(name)


def open_ledger() -> ActorHandle:
    """A new, empty ledger for this job (driver side, before the datasets are built); it lives
    until the next one opens or the driver exits. One run at a time per Ray job, unless the
    runs share one (`shared_ledger`)."""
    name = ledger_name()
    if name in _SHARED:
        return _OPEN[name]
    if name in _OPEN:  # an earlier run's, in this process
        ray.kill(_OPEN.pop(name))
    ledger = ray.remote(num_cpus=0)(BadPairLedger).options(name=name)
    for _ in range(100):
        try:
            _OPEN[name] = ledger.remote()
            return _OPEN[name]
        except ActorAlreadyExistsError:  # the killed one still holds the name
            time.sleep(0.1)
    raise RuntimeError(f"the actor name {name} stays taken; is another run in this job?")


def record_bad_pairs(ledger: ActorHandle, errors: dict[str, str]) -> None:
    """Record failed pairs from a decode task; waits, so that a batch is handed on only once
    its failures are counted."""
    ray.get(ledger.record.remote(errors))


def _ledger() -> ActorHandle:
    try:
        return ray.get_actor(ledger_name())
    except ValueError as exc:  # never silently zero: that would hide the pairs left out
        raise RuntimeError(
            f"no bad-pair ledger {ledger_name()}: build the datasets with "
            "jobs.training.datasets.build_train_val, one run at a time per Ray job"
        ) from exc


def read_bad_pairs() -> dict[str, str]:
    """{pair: error} of every pair that failed so far in this job."""
    return ray.get(_ledger().errors.remote())


def count_over_ranks(device: torch.device) -> int:
    """The number of bad pairs so far, the same on every rank: each reads the ledger and the
    largest count wins (a rank that reads later may already see the next epoch's reads)."""
    count = torch.tensor([ray.get(_ledger().count.remote())], dtype=torch.int64, device=device)
    return int(all_reduce(count, "max")[0])


def examples(errors: dict[str, str], limit: int = MAX_EXAMPLES) -> list[str]:
    """Up to `limit` errors, each naming its file, in the order of the pairs' names."""
    return [errors[pair] for pair in sorted(errors)[:limit]]


class BadPairsError(DataValidationError):
    """More pairs failed to read or decode during training than --max-failed-fraction allows."""

    exit_kind = "criterion"  # a job ends with exit code 1 (jobs.common.exits)

    @classmethod
    def of(cls, errors: dict[str, str], max_bad_pairs: int) -> BadPairsError:
        listing = "  " + shorten(
            (errors[pair] for pair in sorted(errors)), limit=MAX_EXAMPLES, sep="\n  "
        )
        return cls(
            f"{len(errors)} image/mask pair(s) could not be read or decoded during training, "
            f"more than the {max_bad_pairs} that --max-failed-fraction allows:\n{listing}\n"
            "Repair or remove these files, or raise --max-failed-fraction to train without "
            "them."
        )
