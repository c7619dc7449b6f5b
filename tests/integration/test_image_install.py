"""The project image's install step (cluster/image/install.sh, which cluster/image/Dockerfile
runs) in a fresh virtual environment, as CI runs it: the pinned requirements and the project
(not editable) install, the jobs import from the installed package and answer --help, and the
versions are the pins. The base image cannot be pulled here, so this is the part of the image
build that can be run; `pypi` takes torch from the configured index (this machine's local CPU
wheel; PyPI's CUDA build in the GPU image). About 2 minutes, from local wheels."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO_ROOT

IMAGE = REPO_ROOT / "cluster" / "image"


def pins() -> dict[str, str]:
    """Package name (lower case, no extras) -> pinned version, from requirements.txt."""
    found = {}
    for line in (IMAGE / "requirements.txt").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?==(\S+)", line.strip())
        if match:
            found[match[1].lower()] = match[3]
    return found


@pytest.mark.integration
@pytest.mark.timeout(1200)
def test_install_script_in_a_fresh_venv(tmp_path: Path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "VIRTUAL_ENV": str(venv),
        "CUDA_VISIBLE_DEVICES": "",
    }
    proc = subprocess.run(
        ["bash", str(IMAGE / "install.sh"), "pypi", str(REPO_ROOT)],
        cwd=tmp_path,  # not the checkout: the jobs must come from the installed package
        env=env,
        capture_output=True,
        text=True,
        timeout=1100,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "install.sh: done" in proc.stdout

    python = str(venv / "bin" / "python")
    check = subprocess.run(
        [python, "-m", "pip", "check"], env=env, capture_output=True, text=True, timeout=120
    )
    assert check.returncode == 0, check.stdout + check.stderr

    probe = subprocess.run(
        [
            python,
            "-c",
            "import importlib.metadata as md, json, jobs, unet_core; print(json.dumps("
            "{'versions': {d.metadata['Name'].lower(): d.version for d in md.distributions()},"
            " 'jobs': jobs.__file__, 'unet_core': unet_core.__file__}))",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    found = json.loads(proc_last_line(probe.stdout))
    site = str(venv / "lib")
    assert found["jobs"].startswith(site) and found["unet_core"].startswith(site), found
    versions = found["versions"]
    wrong = {
        name: (version, versions.get(name))
        for name, version in pins().items()
        if versions.get(name, "").split("+")[0] != version
    }
    assert not wrong, f"installed versions differ from requirements.txt (pin, installed): {wrong}"
    assert "unet-ray" in versions


def proc_last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def test_install_script_refuses_an_unknown_torch_source(tmp_path: Path):
    proc = subprocess.run(
        ["bash", str(IMAGE / "install.sh"), "cuda"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "unknown torch source 'cuda'" in proc.stderr and "pypi, cpu" in proc.stderr


@pytest.mark.integration
def test_laptop_client_install_brings_no_torch(tmp_path: Path):
    """cluster/README.md step 1, `pip install "ray[default]==2.60.0"`, resolved by pip (a dry
    run, nothing installed): the Ray CLI and dashboard client, no torch, no CUDA wheels."""
    readme = (REPO_ROOT / "cluster" / "README.md").read_text()
    (line,) = re.findall(r'^\s*pip install "(ray\[default\]==[\d.]+)"$', readme, flags=re.M)
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
        + ["--report", str(report), line],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert "ray" in names and "click" in names, names
    heavy = sorted(n for n in names if n in ("torch", "numpy", "mlflow") or n.startswith("nvidia"))
    assert not heavy, f"the laptop client would install {heavy}"
