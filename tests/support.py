"""Helpers shared by the test folders: where things are, and how a missing need is reported."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("UNET_SHARED_DATA") or REPO_ROOT.parent / "shared" / "data")
"""The real data sets (../shared/data beside the checkout, or $UNET_SHARED_DATA)."""


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(reason: str) -> None:
    """Skip a test whose need is absent on a developer's machine; fail it in CI (CI=true), where
    everything but a GPU must be present, so that nothing there passes by being skipped."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: only GPU tests may skip)")
    pytest.skip(reason)
