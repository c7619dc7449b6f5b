"""The shape of the code: every module imports on its own, and no file grows past its room."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import REPO_ROOT

PACKAGES = ("jobs", "unet_core")
ENTRY_SCRIPTS = ("train.py", "segment.py", "evaluate.py", "demo.py", "export.py")
MAX_MODULE_LINES = 400
MAX_ENTRY_LINES = 150


def modules() -> list[str]:
    names = []
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


# Each module is imported with every module of this project dropped from sys.modules first, so
# an import that only works because another module happened to be imported before fails here.
# Third-party packages stay loaded: one interpreter checks them all in seconds.
PROBE = """
import importlib, sys, traceback
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m.split(".")[0] in ("jobs", "unet_core")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ":\\n" + traceback.format_exc())
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_on_its_own():
    names = modules()
    assert "jobs.training.worker_loop" in names and "unet_core.model" in names
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *names],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_is_over_its_size(package):
    too_long = {}
    for path in sorted((REPO_ROOT / package).rglob("*.py")):
        rel = path.relative_to(REPO_ROOT).as_posix()
        lines = len(path.read_text().splitlines())
        entry = package == "jobs" and path.parent.name == "jobs" and path.name in ENTRY_SCRIPTS
        limit = MAX_ENTRY_LINES if entry else MAX_MODULE_LINES
        if lines > limit:
            too_long[rel] = f"{lines} lines > {limit}"
    assert not too_long, f"split these by concern: {too_long}"


def test_entry_scripts_stay_thin():
    for name in ENTRY_SCRIPTS:
        path = REPO_ROOT / "jobs" / name
        assert path.is_file(), path
        assert "def main(argv: list[str] | None = None) -> int:" in path.read_text(), name
