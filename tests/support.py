"""Helpers shared by the test folders: where things are, and how a missing need is reported.

Outside CI (a developer's machine, a fresh clone) a test whose need is absent (the real data
sets, Chromium, the ONNX packages) skips, naming what it needs; with CI=true in the environment
(the project's CI runs `.ci/run` so) it fails instead: there everything but a GPU is present.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA_ENV = "UNET_SHARED_DATA"
SHARED_DATA = Path(os.environ.get(SHARED_DATA_ENV) or REPO_ROOT.parent / "shared" / "data")
"""The real data sets (../shared/data beside the checkout, or $UNET_SHARED_DATA)."""


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(reason: str) -> None:
    """Skip a test whose need is absent on a developer's machine; fail it in CI (CI=true), where
    everything but a GPU must be present, so that nothing there passes by being skipped."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: only GPU tests may skip)")
    pytest.skip(reason)


def shared_data(rel: str) -> Path:
    """The real data set ``SHARED_DATA / rel``, or `missing` naming it (../shared/data/<rel>)."""
    root = SHARED_DATA / rel
    if not root.is_dir():
        missing(
            f"needs the real data set ../shared/data/{rel} (beside the checkout, or "
            f"${SHARED_DATA_ENV}/{rel}): {root} is absent"
        )
    return root
