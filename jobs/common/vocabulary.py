"""The flag vocabulary the jobs share (docs/flags.md): ``--device``, ``--gpus-per-worker``,
``--num-workers N|MIN-MAX`` and the default of ``--log-to-mlflow``, parsed in one place.

Imports neither torch nor Ray: `--help` and flag errors answer at once.
"""

from __future__ import annotations

import os
import re

DEVICES = ("auto", "cpu", "gpu")
"""--device: auto = GPU when this machine has CUDA (a local Ray), or the cluster has GPUs now,
or its autoscaler can launch GPU nodes (jobs/common/cluster_info.py choose_gpu); else CPU."""
_WORKER_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")


def device_request(device: str) -> bool | None:
    """``--device`` as the ``requested`` argument of `choose_gpu`: None = auto."""
    return {"auto": None, "gpu": True, "cpu": False}[device]


def device_problems(device: str, gpus_per_worker: float) -> list[str]:
    """What is wrong with ``--device`` and ``--gpus-per-worker``."""
    problems = []
    if device not in DEVICES:
        problems.append(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if not gpus_per_worker > 0:
        problems.append(
            f"--gpus-per-worker must be > 0 (a fraction shares a GPU), got {gpus_per_worker}; "
            "use --device cpu for no GPU"
        )
    return problems


def parse_workers(value: int | str, *, auto: bool = False) -> tuple[int, int]:
    """(MIN, MAX) of ``--num-workers``: N is (N, N), "MIN-MAX" a range; ValueError says why.
    With ``auto`` (predictor actors) 0 means automatic: "0" is (0, 0) and MIN 0 in a range is
    an automatic smallest pool."""
    least = 0 if auto else 1
    if auto and isinstance(value, str) and value.strip().lower() == "auto":
        value = 0
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if value < least:
            raise ValueError(
                f"--num-workers must be >= {least}{' (0 = auto)' if auto else ''}, got {value}"
            )
        return value, value
    found = _WORKER_RANGE.match(value) if isinstance(value, str) else None
    if found is None:
        raise ValueError(
            f"--num-workers must be a count N or a range MIN-MAX (e.g. 2-8), got {value!r}"
        )
    low, high = int(found[1]), int(found[2])
    if not (least <= low <= high and high >= 1):
        rule = "0 <= MIN <= MAX, MAX >= 1 (MIN 0 = auto)" if auto else "1 <= MIN <= MAX"
        raise ValueError(f"--num-workers {value!r}: a range needs {rule}")
    return low, high


def normal_workers(value: int | str, *, auto: bool = False) -> int | str:
    """``--num-workers`` checked and in one form: a count as an int ("4" -> 4), a range as
    "MIN-MAX" (" 2 - 8" -> "2-8")."""
    low, high = parse_workers(value, auto=auto)
    fixed = not isinstance(value, str) or value.strip().isdigit() or low == high == 0
    return low if fixed else f"{low}-{high}"


def logs_to_mlflow(flag: bool | None, tracking_uri: str | None, model: str) -> bool:
    """--log-to-mlflow, else its default: on when a tracking store is named (--tracking-uri or
    $MLFLOW_TRACKING_URI) or the model is an MLflow URI (models:/, runs:/), else off."""
    if flag is not None:
        return flag
    named = bool(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))
    return named or model.startswith(("models:/", "runs:/"))
