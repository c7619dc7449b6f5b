"""The shape of the code: every module imports on its own, no file grows past its room, and no
stage room imports another except where `ALLOWED_CROSSINGS` says why."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO_ROOT

PACKAGES = ("jobs", "unet_core")
ENTRY_SCRIPTS = ("train.py", "segment.py", "evaluate.py", "demo.py", "export.py", "plan.py")
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


# --- the import graph of jobs/ ----------------------------------------------------------------
ROOMS = (
    "training",
    "inference",
    "segmenting",
    "evaluating",
    "reporting",
    "exporting",
    "planning",
    "tuning",
)
"""Stage rooms of `jobs/`; `jobs/common` is shared by all and imports none of them, and the
entry scripts `jobs/*.py` may import anything."""
ALLOWED_CROSSINGS = {
    ("segmenting", "inference"): "the shared prediction pipeline (config, decode, session)",
    ("evaluating", "inference"): "the shared prediction pipeline (config, decode, session)",
    ("reporting", "segmenting"): "the QC report reads a segment output's manifest",
    ("segmenting", "reporting"): "`segment --report` makes the QC report at the end of a run",
    ("training", "planning"): "`train --plan auto` plans its run with unet-plan's rules",
    ("planning", "training"): "the step time is measured making batches as training makes them",
    ("tuning", "training"): "each trial is a run of the train job (its config, loop, gate)",
}
"""(importing room, imported room) -> why; every other import across rooms fails the test."""


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in ``path``, function-level ones included, relative ones
    made absolute; ``from jobs import x`` counts as ``jobs.x``."""
    package = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            names = [f"{base}.{alias.name}" for alias in node.names] if base == "jobs" else [base]
            found += [(node.lineno, name) for name in names]
    return found


def room_crossings(jobs_root: Path) -> list[tuple[str, str, str, int, str]]:
    """(importing room, imported room, file, line, module) of each import from one room of
    ``jobs_root`` into another (`jobs/common` importing any room included)."""
    crossings = []
    for path in sorted(jobs_root.rglob("*.py")):
        parts = path.relative_to(jobs_root).parts
        if len(parts) == 1:
            continue  # an entry script (or jobs/__init__.py): may import anything
        room = parts[0]
        for line, module in imported_modules(path):
            target = module.split(".")
            if target[0] == "jobs" and len(target) > 1 and target[1] in ROOMS and target[1] != room:
                crossings.append(
                    (room, target[1], path.relative_to(REPO_ROOT).as_posix(), line, module)
                )
    return crossings


def test_no_stage_room_imports_another():
    crossings = room_crossings(REPO_ROOT / "jobs")
    fix = {
        True: "jobs/common imports no stage room: move the piece it needs into jobs/common",
        False: "move the piece both rooms need to jobs/common (or, if the crossing is meant, "
        "add it to ALLOWED_CROSSINGS in tests/unit/test_layout.py with its reason)",
    }
    forbidden = [
        f"{file}:{line} imports {module} ({room} -> {other}): {fix[room == 'common']}"
        for room, other, file, line, module in crossings
        if (room, other) not in ALLOWED_CROSSINGS
    ]
    assert not forbidden, "\n".join(forbidden)
    unused = set(ALLOWED_CROSSINGS) - {(room, other) for room, other, *_ in crossings}
    assert not unused, (
        f"no import crosses {sorted(unused)} any more: drop it from ALLOWED_CROSSINGS"
    )


def test_the_import_graph_check_sees_every_form_of_import(tmp_path, monkeypatch):
    """A forbidden import is found however it is written: plain, from, inside a function,
    relative, and ``from jobs import <room>``; common importing a room is one too."""
    jobs = tmp_path / "jobs"
    sources = {
        "train.py": "from jobs.exporting import job\n",  # an entry script: allowed
        "training/a.py": "import jobs.inference.session\n",
        "training/b.py": "def f():\n    from jobs.exporting.job import run_export\n",
        "training/c.py": "from jobs import evaluating\nfrom jobs.common import fs\n",
        "training/d.py": "from .registry import x\nfrom ..segmenting import layout\n",
        "common/e.py": "from jobs.training import registry\n",
        "segmenting/f.py": "from jobs.inference import pipeline\n",
    }
    for name, text in sources.items():
        (jobs / name).parent.mkdir(parents=True, exist_ok=True)
        (jobs / name).write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "REPO_ROOT", tmp_path)
    found = {(room, other, Path(file).name) for room, other, file, _, _ in room_crossings(jobs)}
    assert found == {
        ("training", "inference", "a.py"),
        ("training", "exporting", "b.py"),
        ("training", "evaluating", "c.py"),
        ("training", "segmenting", "d.py"),
        ("common", "training", "e.py"),
        ("segmenting", "inference", "f.py"),
    }


def test_every_logger_is_named_after_its_module():
    """One naming scheme: ``logging.getLogger(__name__)``; an entry script, whose ``__name__``
    is ``__main__`` when it runs as a script, spells its import name (``jobs.segment``)."""
    wrong = []
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
            entry = path.parent == REPO_ROOT / "jobs"
            for node in ast.walk(ast.parse(path.read_text())):
                if not (
                    isinstance(node, ast.Call)
                    and getattr(node.func, "attr", None) == "getLogger"
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                ):
                    continue
                name = node.args[0].value
                ours = name.split(".")[0] in ("jobs", "unet_core", "unet_ray")
                if ours and not (entry and name == module):
                    rel = path.relative_to(REPO_ROOT).as_posix()
                    wrong.append(f"{rel}:{node.lineno} getLogger({name!r})")
    assert not wrong, f"name these loggers logging.getLogger(__name__): {wrong}"
