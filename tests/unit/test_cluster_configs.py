"""cluster/: the launcher config passes Ray's own validation, the KubeRay manifests carry what
the operator needs, and the runtime_env ships the code and nothing else (checked with the
matcher and zipper Ray uses for `ray job submit --working-dir`). No network, no cloud."""

from __future__ import annotations

import copy
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import ray
import yaml
from ray._private.runtime_env import packaging
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.runtime_env import RuntimeEnv

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: tomli, which pytest (the dev extra) requires there
    import tomli as tomllib

REPO_ROOT = Path(__file__).resolve().parents[2]  # tests/unit/ -> the checkout
CLUSTER = REPO_ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"
RAY_VERSION = ray.__version__
RAY_IMAGE = re.compile(rf"^rayproject/ray:{re.escape(RAY_VERSION)}(-py\d+)?(-gpu|-cu\d+)?$")
JOB_SCRIPTS = {"rayjob-train.yaml": "jobs/train.py", "rayjob-segment.yaml": "jobs/segment.py"}


def load(path: Path):
    return yaml.safe_load(path.read_text())


def pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def pinned(requirement_name: str) -> str:
    """The exact requirement string pyproject.toml gives for a package, e.g. 'torch==2.13.0'."""
    for req in pyproject()["project"]["dependencies"]:
        if re.split(r"[\[<>=!~ ;]", req, maxsplit=1)[0] == requirement_name:
            return req
    raise AssertionError(f"{requirement_name} is not a dependency in pyproject.toml")


# --- the cluster launcher config ------------------------------------------------------------


@pytest.fixture(scope="module")
def aws() -> dict:
    return load(CLUSTER / "aws.yaml")


def test_aws_config_passes_ray_validation(aws):
    # prepare_config fills the AWS defaults from Ray's own defaults.yaml (no cloud calls), as
    # `ray up` does before validating; validate_config checks ray-schema.json and node types.
    prepared = prepare_config(copy.deepcopy(aws))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"


def test_aws_cluster_has_cpu_head_and_autoscaling_gpu_workers(aws):
    types = aws["available_node_types"]
    head = types[aws["head_node_type"]]
    assert head.get("max_workers", 0) == 0
    assert not head["resources"].get("GPU")
    assert not head["node_config"]["InstanceType"].startswith(("g", "p")), "head is a CPU node"

    workers = [spec for name, spec in types.items() if name != aws["head_node_type"]]
    gpu_workers = [w for w in workers if w["node_config"]["InstanceType"].startswith(("g", "p"))]
    assert gpu_workers, "a GPU worker type (g5/g6/p4...) is required"
    for worker in gpu_workers:
        assert worker["min_workers"] == 0, "GPU workers scale from zero"
        assert worker["max_workers"] >= 1
        assert worker["max_workers"] <= aws["max_workers"]


def test_aws_image_matches_the_installed_ray(aws):
    assert RAY_IMAGE.match(aws["docker"]["image"]), aws["docker"]["image"]
    assert aws["docker"]["image"].endswith("-gpu")
    assert pinned("ray").endswith(f"=={RAY_VERSION}"), "pyproject pins another Ray"


def test_aws_nodes_install_the_project_with_pinned_torch(aws):
    commands = " && ".join(aws["setup_commands"])
    assert pinned("torch") in commands, f"setup_commands must install {pinned('torch')}"
    project_dir = next(
        remote for remote, local in aws["file_mounts"].items() if local in (".", "./")
    )
    assert f"pip install --no-cache-dir {project_dir}" in commands
    # rsync of the checkout skips the heavy and private parts.
    assert {".venv", ".git", "/data"} <= set(aws["rsync_exclude"])


def test_aws_token_auth_and_job_settings_reach_every_node(aws):
    run_options = aws["docker"]["run_options"]
    assert "--env RAY_AUTH_MODE=token" in run_options
    # The container user is `ray`: its ~/.ray/auth_token is where Ray looks by default.
    assert aws["file_mounts"].get("/home/ray/.ray") == "~/.ray"
    env = dict(opt.removeprefix("--env ").split("=", 1) for opt in run_options if "=" in opt)
    assert env["MLFLOW_TRACKING_URI"].startswith(("http://", "https://"))
    assert env["AWS_REGION"] == aws["provider"]["region"]
    assert all("ray start" in c for c in aws["head_start_ray_commands"][1:])


# --- KubeRay --------------------------------------------------------------------------------


def check_ray_cluster_spec(spec: dict, where: str) -> None:
    """The fields KubeRay needs (ray.io/v1) and the ones this project relies on."""
    assert spec["rayVersion"] == RAY_VERSION, where
    assert spec.get("authOptions", {}).get("mode") == "token", f"{where}: token auth"

    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict), where
    check_containers(head["template"]["spec"]["containers"], where, gpu=False)

    groups = spec["workerGroupSpecs"]
    assert groups, f"{where}: no worker group"
    for group in groups:
        label = f"{where} worker group {group.get('groupName')!r}"
        assert group["groupName"], label
        assert isinstance(group["rayStartParams"], dict), label
        for key in ("replicas", "minReplicas", "maxReplicas"):
            assert isinstance(group[key], int), f"{label}: {key}"
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], label
        if group["minReplicas"] < group["maxReplicas"]:
            assert spec.get("enableInTreeAutoscaling") is True, f"{label}: autoscaling is off"
        check_containers(group["template"]["spec"]["containers"], label, gpu=True)


def check_containers(containers: list[dict], where: str, *, gpu: bool) -> None:
    ray_container = containers[0]  # KubeRay runs Ray in the first container
    assert RAY_IMAGE.match(ray_container["image"]), f"{where}: {ray_container['image']}"
    resources = ray_container["resources"]
    assert resources["limits"]["cpu"] and resources["limits"]["memory"], where
    if gpu:
        assert int(resources["limits"]["nvidia.com/gpu"]) >= 1, f"{where}: nvidia.com/gpu"
        requests = resources.get("requests", {})
        if "nvidia.com/gpu" in requests:
            assert requests["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"], where
    else:
        assert "nvidia.com/gpu" not in resources["limits"], f"{where}: head without GPU"
    env = {item["name"] for item in ray_container.get("env", [])}
    assert "MLFLOW_TRACKING_URI" in env, f"{where}: jobs need the tracking server"


@pytest.fixture(scope="module")
def raycluster() -> dict:
    return load(KUBERAY / "raycluster.yaml")


def test_raycluster_manifest(raycluster):
    assert raycluster["apiVersion"] == "ray.io/v1"
    assert raycluster["kind"] == "RayCluster"
    assert raycluster["metadata"]["name"]
    check_ray_cluster_spec(raycluster["spec"], "raycluster.yaml")


@pytest.mark.parametrize("name", sorted(JOB_SCRIPTS))
def test_rayjob_manifest(name, raycluster):
    job = load(KUBERAY / name)
    assert job["apiVersion"] == "ray.io/v1"
    assert job["kind"] == "RayJob"
    assert job["metadata"]["name"]
    spec = job["spec"]
    assert spec["entrypoint"].startswith(f"python {JOB_SCRIPTS[name]} "), spec["entrypoint"]
    # The job brings up its own cluster from the same spec as raycluster.yaml.
    assert spec["rayClusterSpec"] == raycluster["spec"], f"{name} drifted from raycluster.yaml"
    check_ray_cluster_spec(spec["rayClusterSpec"], name)
    assert spec["shutdownAfterJobFinishes"] is True
    # runtimeEnvYAML is a valid Ray runtime_env whose code comes from a remote archive.
    runtime_env = RuntimeEnv(**yaml.safe_load(spec["runtimeEnvYAML"]))
    assert runtime_env["working_dir"].startswith(("https://", "s3://", "gs://"))


@pytest.mark.parametrize("name", sorted(JOB_SCRIPTS))
def test_rayjob_entrypoint_flags_exist(name):
    """Every --flag of the entrypoint is one the job script accepts (its --help lists it)."""
    script = REPO_ROOT / JOB_SCRIPTS[name]
    assert script.is_file(), f"{KUBERAY / name} runs {JOB_SCRIPTS[name]}, which is missing"
    entrypoint = shlex.split(load(KUBERAY / name)["spec"]["entrypoint"])
    flags = {arg.split("=", 1)[0] for arg in entrypoint if arg.startswith("--")}
    help_text = subprocess.run(
        [sys.executable, str(script), "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    missing = sorted(f for f in flags if not re.search(rf"{re.escape(f)}\b", help_text))
    assert not missing, f"{name}: {script.name} --help does not list {missing}"


# --- runtime_env ----------------------------------------------------------------------------

SHIPPED = [
    "pyproject.toml",
    "README.md",
    "jobs/__init__.py",
    "jobs/train.py",
    "jobs/segment.py",
    "jobs/common/fs.py",
    "jobs/training/worker_loop.py",
    "jobs/training/pyfunc_model.py",
    "jobs/inference/predictor.py",
    "unet_core/__init__.py",
    "unet_core/data.py",  # a module named like the excluded /data folder
    "cluster/runtime_env.yaml",
    "cluster/kuberay/raycluster.yaml",
    "tests/unit/test_model.py",
]
NOT_SHIPPED = [
    ".venv/bin/python",
    ".venv/lib/python3.11/site-packages/torch/lib/libtorch_cpu.so",
    ".git/HEAD",
    ".git/objects/ab/cdef",
    "data/images/a.png",
    "data/masks/a.png",
    "datasets/camvid/x.png",
    "mlflow.db",
    "mlruns/0/meta.yaml",
    "mlartifacts/1/abc/artifacts/unet.pt",
    "outputs/demo/panel.png",
    "model.pt",
    "checkpoints/epoch_3/unet.pt",
    "unet_core/__pycache__/model.cpython-311.pyc",
    "unet_ray.egg-info/PKG-INFO",
    ".pytest_cache/v/cache/nodeids",
    ".ruff_cache/0.6/x",
    ".cache/unet-ray/demo/images/a.png",
    "cluster/runtime_env.local.yaml",
    ".env",
]


@pytest.fixture(scope="module")
def runtime_env() -> dict:
    return load(CLUSTER / "runtime_env.yaml")


def test_runtime_env_is_valid(runtime_env):
    parsed = RuntimeEnv(**runtime_env)
    assert parsed["working_dir"] == "."
    assert all(isinstance(v, str) for v in runtime_env.get("env_vars", {}).values())


def test_runtime_env_excludes_data_envs_and_outputs(runtime_env, tmp_path):
    """Package a fake checkout exactly as `ray job submit --working-dir` does (Ray's zipper
    with the runtime_env's excludes; .gitignore ignored so the excludes stand on their own)."""
    root = tmp_path / "checkout"
    for rel in SHIPPED + NOT_SHIPPED:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    archive = tmp_path / "package.zip"
    packaging._zip_files(str(root), runtime_env["excludes"], str(archive), include_gitignore=False)
    with zipfile.ZipFile(archive) as zf:
        shipped = {name for name in zf.namelist() if not name.endswith("/")}
    assert sorted(set(SHIPPED) - shipped) == [], "code missing from the package"
    assert sorted(shipped & set(NOT_SHIPPED)) == [], "shipped what must stay behind"


def test_runtime_env_prunes_heavy_folders_without_walking_them(runtime_env, tmp_path):
    """The excludes match the folders themselves, so Ray never walks a 2 GB .venv."""
    excluded = packaging._get_excludes(tmp_path, runtime_env["excludes"])
    for folder in (".venv", ".git", "data", "mlruns", "mlartifacts", "outputs", ".cache"):
        assert excluded(tmp_path / folder), folder
    for folder in ("jobs", "unet_core", "cluster", "tests"):
        assert not excluded(tmp_path / folder), folder


def test_runtime_env_package_of_this_checkout_is_small(runtime_env):
    """What `ray job submit --working-dir .` would upload from this checkout right now."""
    sizes: dict[str, int] = {}

    def collect(path: Path) -> None:
        if path.is_file():
            sizes[path.relative_to(REPO_ROOT).as_posix()] = path.stat().st_size

    excludes = [packaging._get_excludes(REPO_ROOT, runtime_env["excludes"])]
    packaging._dir_travel(REPO_ROOT, excludes, collect, include_gitignore=False)
    assert any(p.startswith("jobs/") for p in sizes) and any(
        p.startswith("unet_core/") for p in sizes
    )
    assert not [p for p in sizes if p.startswith((".venv/", ".git/"))]
    total = sum(sizes.values())
    assert total < 20 * 2**20, f"package would be {total / 2**20:.1f} MiB: add excludes"
