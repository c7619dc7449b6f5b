"""Fixtures of the segment and evaluate tests."""

from __future__ import annotations

import pytest

from tests.integration.inference.helpers import make_checkpoint, register_checkpoint
from unet_core.classes import ClassMap


@pytest.fixture
def registered(tmp_path, mlflow_uri, synthetic_root):
    """Version 1 (random seed 1) then version 2 (seed 0) of `unet`; @champion -> 2. Returns
    (version 2's checkpoint, "2")."""
    class_map = ClassMap.from_file(synthetic_root / "classes.json")
    register_checkpoint(make_checkpoint(tmp_path / "v1.pt", class_map, seed=1), tmp_path / "art")
    ckpt = make_checkpoint(tmp_path / "v2.pt", class_map, seed=0)
    version = register_checkpoint(ckpt, tmp_path / "art")
    return ckpt, version
