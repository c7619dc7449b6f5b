"""The project image (cluster/image) agrees with the rest: one pinned requirements file that
pyproject.toml's ranges admit and that the venv the tests ran with has installed; a Dockerfile
on Ray's image of the pinned Ray and of this Python; the launcher config and the KubeRay
kustomization naming an image of that Python. The install step itself runs in
tests/integration/test_image_install.py."""

from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path

import ray
import yaml
from packaging.requirements import Requirement

from tests.support import REPO_ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: tomli, which pytest (the dev extra) requires there
    import tomli as tomllib

IMAGE = REPO_ROOT / "cluster" / "image"
PYTHON_TAG = f"py{sys.version_info.major}{sys.version_info.minor}"
"""The image's Python as Ray's tags spell it: the venv's (py311)."""


def pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def pyproject_requirements() -> dict[str, Requirement]:
    """Name -> requirement of the base dependencies and of the extras an image installs."""
    project = pyproject()["project"]
    lines = project["dependencies"] + project["optional-dependencies"]["export"]
    return {Requirement(r).name.lower(): Requirement(r) for r in lines}


def pins() -> dict[str, Requirement]:
    lines = (IMAGE / "requirements.txt").read_text().splitlines()
    reqs = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    return {r.name.lower(): r for r in reqs}


def pinned_version(req: Requirement) -> str:
    (spec,) = req.specifier
    assert spec.operator == "==", f"requirements.txt: {req} is not an exact pin"
    return spec.version


def test_requirements_pin_every_dependency_within_pyproject():
    wanted, pinned = pyproject_requirements(), pins()
    assert not sorted(set(wanted) - set(pinned)), "pyproject dependencies requirements.txt lacks"
    assert not sorted(set(pinned) - set(wanted)), "pins of packages pyproject does not name"
    for name, req in pinned.items():
        version = pinned_version(req)
        assert wanted[name].specifier.contains(version, prereleases=True), (
            f"requirements.txt pins {req}, outside pyproject.toml's {wanted[name]}"
        )
        assert req.extras == wanted[name].extras, f"{name}: extras {req.extras}"


def test_requirements_are_what_the_tests_ran_with():
    wrong = {}
    for name, req in pins().items():
        installed = importlib.metadata.version(name).split("+")[0]  # 2.13.0+cpu is 2.13.0
        if installed != pinned_version(req):
            wrong[name] = (pinned_version(req), installed)
    assert not wrong, f"requirements.txt pins vs this venv (pin, installed): {wrong}"


def dockerfile() -> str:
    return (IMAGE / "Dockerfile").read_text()


def test_dockerfile_builds_on_the_pinned_ray_and_this_python():
    text = dockerfile()
    (base,) = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
    assert base == f"rayproject/ray:{ray.__version__}-{PYTHON_TAG}-${{VARIANT}}", base
    assert re.search(r"^ARG VARIANT=gpu$", text, flags=re.M), "GPU by default"
    assert pinned_version(pins()["ray"]) == ray.__version__
    assert "default" in pins()["ray"].extras  # the dashboard and job server
    python = Requirement(f"python{pyproject()['project']['requires-python']}")
    assert python.specifier.contains(f"{sys.version_info.major}.{sys.version_info.minor}")


def test_dockerfile_installs_through_the_script_with_each_torch():
    text = dockerfile()
    assert "install.sh" in text and "PIP_NO_CACHE_DIR=1" in text
    assert re.search(r'"\$VARIANT" = cpu \]; then torch=cpu; else torch=pypi', text)
    script = (IMAGE / "install.sh").read_text()
    assert 'requirements="$here/requirements.txt"' in script
    assert "pip install --no-deps" in script  # the project, not editable; deps are the pins
    torch_pin = pinned_version(pins()["torch"])
    assert f"torch=={torch_pin}" in pyproject()["project"]["dependencies"]
    ignore = [
        line
        for line in (IMAGE / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*", "the build context starts from nothing (no .venv, no data)"


def test_launcher_and_kustomization_name_an_image_of_this_python():
    aws = yaml.safe_load((REPO_ROOT / "cluster" / "aws.yaml").read_text())
    (image,) = yaml.safe_load((REPO_ROOT / "cluster/kuberay/kustomization.yaml").read_text())[
        "images"
    ]
    for where, tag in [
        ("cluster/aws.yaml docker.image", aws["docker"]["image"].rsplit(":", 1)[1]),
        ("cluster/kuberay/kustomization.yaml newTag", image["newTag"]),
    ]:
        version, python, variant = tag.split("-")
        assert python == PYTHON_TAG, f"{where}: {tag} is not a {PYTHON_TAG} image"
        assert variant == "gpu", f"{where}: {tag}: the clusters have GPU workers"
        assert version == pyproject()["project"]["version"], f"{where}: {tag}"


def test_readme_builds_the_image_it_names():
    readme = (REPO_ROOT / "cluster" / "README.md").read_text()
    assert "docker build -f cluster/image/Dockerfile" in readme
    tags = set(re.findall(r"<your-registry>/unet-ray:(\S+?)[\s`]", readme))
    assert tags and all(t.endswith((f"{PYTHON_TAG}-gpu", f"{PYTHON_TAG}-cpu")) for t in tags)


def test_install_script_is_executable():
    assert Path(IMAGE / "install.sh").stat().st_mode & 0o111
