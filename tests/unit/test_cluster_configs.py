"""cluster/ as shipped: the KubeRay manifests validate against KubeRay v1.7.0's CRD schemas, the
launcher config against Ray's own schema, every pod has its ServiceAccount and runs the project
image, every entrypoint parses with its job's parser, every placeholder is explained in
cluster/README.md, and the runtime_env ships the code and nothing else (checked with the
matcher and zipper Ray uses for `ray job submit --working-dir`). No network, no cloud.
The project image's versions: tests/unit/test_cluster_image.py."""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import io
import json
import re
import shlex
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray._private.runtime_env import packaging
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.runtime_env import RuntimeEnv

from tests.support import REPO_ROOT, missing

CLUSTER = REPO_ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"
CRDS = REPO_ROOT.parent / "shared" / "kuberay-crds"
MANIFESTS = sorted(p for p in KUBERAY.glob("*.yaml") if p.name != "kustomization.yaml")
JOB_SCRIPTS = {"rayjob-train.yaml": "jobs/train.py", "rayjob-segment.yaml": "jobs/segment.py"}
PLACEHOLDER = re.compile(r"<your-[a-z0-9-]+>")
CONFIGS = [CLUSTER / "aws.yaml", CLUSTER / "runtime_env.yaml", *KUBERAY.glob("*.yaml")]


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def documents() -> list[tuple[str, dict]]:
    """(file name, document) for every document of every manifest (multi-document YAML)."""
    return [(p.name, d) for p in MANIFESTS for d in yaml.safe_load_all(p.read_text()) if d]


def kustomization() -> dict:
    return load(KUBERAY / "kustomization.yaml")


def walk(node: Any, path: tuple = ()):
    """Every (path, key, value) of a nested document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from walk(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, (*path, i))


def strict(schema: Any) -> Any:
    """The CRD schema as the API server applies it with strict field validation (kubectl's
    default): an object with declared properties refuses fields it does not declare."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        open_ended = "additionalProperties" in schema or schema.get(
            "x-kubernetes-preserve-unknown-fields"
        )
        if "properties" in schema and not open_ended:
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@functools.cache
def crd_schemas() -> dict[str, dict]:
    """kind -> strict openAPIV3Schema of its ray.io/v1 version."""
    if not CRDS.is_dir():
        missing(f"KubeRay v1.7.0 CRDs not found at {CRDS} (the shared folder beside the checkout)")
    schemas = {}
    for path in CRDS.glob("*.yaml"):  # megabytes of YAML: libyaml's loader, not pure Python
        for crd in yaml.load_all(path.read_text(), Loader=yaml.CSafeLoader):
            if crd and crd.get("kind") == "CustomResourceDefinition":
                (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
                schemas[crd["spec"]["names"]["kind"]] = strict(v1["schema"]["openAPIV3Schema"])
    return schemas


def cluster_specs() -> list[tuple[str, dict]]:
    """(where, RayCluster spec) of raycluster.yaml and of each RayJob's embedded cluster."""
    specs = []
    for name, doc in documents():
        if doc["kind"] == "RayCluster":
            specs.append((name, doc["spec"]))
        elif doc["kind"] == "RayJob":
            specs.append((name, doc["spec"]["rayClusterSpec"]))
    return specs


# --- KubeRay --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [p.name for p in MANIFESTS])
def test_manifest_validates_against_its_schema(name):
    docs = [d for n, d in documents() if n == name]
    assert docs, f"{name} holds no document"
    for doc in docs:
        kind = doc.get("kind")
        if kind == "ServiceAccount":
            assert doc["apiVersion"] == "v1" and doc["metadata"]["name"], name
            continue
        assert doc.get("apiVersion") == "ray.io/v1", f"{name}: apiVersion {doc.get('apiVersion')}"
        assert kind in crd_schemas(), f"{name}: kind {kind} is not a KubeRay CRD"
        errors = sorted(jsonschema.Draft7Validator(crd_schemas()[kind]).iter_errors(doc), key=str)
        assert not errors, f"{name}: " + "; ".join(
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:5]
        )


def test_kustomization_lists_every_manifest():
    assert sorted(kustomization()["resources"]) == [p.name for p in MANIFESTS]


def test_every_service_account_is_in_the_folder():
    accounts = {d["metadata"]["name"] for _, d in documents() if d["kind"] == "ServiceAccount"}
    used = {
        (name, value)
        for name, doc in documents()
        for _, key, value in walk(doc)
        if key == "serviceAccountName"
    }
    assert used, "no pod names a service account"
    assert not {u for u in used if u[1] not in accounts}, f"accounts: {accounts}, used: {used}"
    text = (KUBERAY / "serviceaccount.yaml").read_text()  # both ways to S3 access shown
    assert "create-pod-identity-association" in text and "eks.amazonaws.com/role-arn" in text


def test_every_image_is_the_project_image():
    (image,) = kustomization()["images"]
    found = [(n, v) for n, d in documents() for _, key, v in walk(d) if key == "image"]
    assert len(found) >= 12, found  # head, cpu, gpu-spot, gpu in three manifests
    assert {v for _, v in found} == {image["name"]}, f"not {image['name']}: {found}"
    project_image = f"{image['newName']}:{image['newTag']}"
    assert load(CLUSTER / "aws.yaml")["docker"]["image"] == project_image


def test_kustomize_renders_the_project_image_everywhere():
    kubectl = shutil.which("kubectl")
    if not kubectl:
        missing("kubectl is not installed (kubectl kustomize renders the manifests)")
    out = subprocess.run(
        [kubectl, "kustomize", str(KUBERAY)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    rendered = [d for d in yaml.safe_load_all(out.stdout) if d]
    (image,) = kustomization()["images"]
    images = {v for d in rendered for _, key, v in walk(d) if key == "image"}
    assert images == {f"{image['newName']}:{image['newTag']}"}, images
    assert len(rendered) == len(documents())


def test_cpu_and_gpu_groups():
    for where, spec in cluster_specs():
        assert spec["rayVersion"] == ray.__version__, where
        assert spec["authOptions"]["mode"] == "token", where
        assert spec["enableInTreeAutoscaling"] is True, where
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", f"{where}: head"
        groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
        for name, group in groups.items():
            assert group["minReplicas"] == 0 == group["replicas"], f"{where} {name}: from zero"
        gpus = {n: g for n, g in groups.items() if limits(g).get("nvidia.com/gpu")}
        cpus = {n: g for n, g in groups.items() if n not in gpus}
        assert cpus and all(g["maxReplicas"] >= 1 for g in cpus.values()), f"{where}: CPU group"
        spot = [g for g in gpus.values() if "SPOT" in str(g["template"]["spec"])]
        assert spot and spot[0]["priority"] > max(
            g.get("priority", 0) for g in gpus.values() if g is not spot[0]
        ), f"{where}: spot first"


def limits(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]["resources"]["limits"]


@pytest.mark.parametrize("name", sorted(JOB_SCRIPTS))
def test_rayjob_runs_on_the_raycluster_spec_and_ships_code_only(name):
    job = load(KUBERAY / name)
    assert job["spec"]["rayClusterSpec"] == load(KUBERAY / "raycluster.yaml")["spec"], name
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    RuntimeEnv(**runtime_env)  # a valid runtime_env
    assert set(runtime_env) == {"working_dir", "env_vars"}, f"{name}: code only, no packages"
    assert runtime_env["working_dir"].startswith("s3://") and runtime_env["working_dir"].endswith(
        ".zip"
    )


def entrypoint(name: str) -> list[str]:
    return shlex.split(load(KUBERAY / name)["spec"]["entrypoint"])


def test_train_rayjob_resumes_when_resubmitted():
    job = load(KUBERAY / "rayjob-train.yaml")
    args = entrypoint("rayjob-train.yaml")
    assert args[args.index("--run-name") + 1] == job["metadata"]["name"]
    assert job["spec"]["backoffLimit"] >= 1, "a failed attempt is retried (and resumes)"
    assert int(args[args.index("--max-failures") + 1]) >= 5, "spot: survive preemptions"
    assert args[args.index("--storage-path") + 1].startswith("s3://")


@pytest.mark.parametrize("name", sorted(JOB_SCRIPTS))
def test_rayjob_entrypoint_parses_with_its_job(name):
    """Every --flag is one the job's --help lists, and the job's own parser accepts the line."""
    args = entrypoint(name)
    assert args[:2] == ["python", JOB_SCRIPTS[name]], args
    module = importlib.import_module(JOB_SCRIPTS[name].removesuffix(".py").replace("/", "."))
    parse = getattr(module, "parse", None) or module.parse_args
    help_text = capture_help(parse)
    flags = {a.split("=", 1)[0] for a in args[2:] if a.startswith("--")}
    missing_flags = sorted(f for f in flags if not re.search(rf"{re.escape(f)}\b", help_text))
    assert not missing_flags, f"{name}: {JOB_SCRIPTS[name]} --help does not list {missing_flags}"
    parse([PLACEHOLDER.sub("example", a) for a in args[2:]])  # raises on a bad value


def capture_help(parse) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        parse(["--help"])
    return out.getvalue()


# --- the cluster launcher config ------------------------------------------------------------


@pytest.fixture(scope="module")
def aws() -> dict:
    return load(CLUSTER / "aws.yaml")


def test_aws_config_validates_against_ray_schema(aws):
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(aws, schema)
    # as `ray up` does: Ray's AWS defaults filled in (no cloud calls), then its own checks
    validate_config(prepare_config(copy.deepcopy(aws)))


def test_aws_node_types(aws):
    types = aws["available_node_types"]
    head = types.pop(aws["head_node_type"])
    assert head["max_workers"] == 0 and not head["node_config"]["InstanceType"].startswith("g")
    gpu = {n: t for n, t in types.items() if t["node_config"]["InstanceType"].startswith("g")}
    cpu = {n: t for n, t in types.items() if n not in gpu}
    assert cpu and all(t["max_workers"] >= 1 for t in cpu.values()), "a CPU worker type"
    assert all(t["min_workers"] == 0 for t in types.values()), "workers scale from zero"
    spot = [t for t in gpu.values() if "InstanceMarketOptions" in t["node_config"]]
    assert spot and spot[0]["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert any(t["max_workers"] >= 1 for t in gpu.values()), "GPU workers"
    assert sum(t["max_workers"] for t in types.values()) <= aws["max_workers"]


def test_aws_nodes_download_nothing(aws):
    """The image has everything: setup only checks it against the pins (pip --no-index)."""
    commands = aws["setup_commands"] + aws["head_setup_commands"] + aws["worker_setup_commands"]
    pip_installs = [c for c in commands if "pip install" in c]
    assert pip_installs and all("--no-index" in c for c in pip_installs), pip_installs
    project_dir = next(remote for remote, local in aws["file_mounts"].items() if local == ".")
    assert any(f"{project_dir}/cluster/image/requirements.txt" in c for c in pip_installs)
    assert "--env RAY_AUTH_MODE=token" in aws["docker"]["run_options"]
    assert aws["file_mounts"].get("/home/ray/.ray") == "~/.ray"
    assert {".venv", ".git", "/data"} <= set(aws["rsync_exclude"])


# --- what every config leaves to the user ---------------------------------------------------


def test_no_config_sets_aws_region():
    """The jobs ask each bucket for its region; a fixed AWS_REGION would override that."""
    for path in CONFIGS:
        for line in path.read_text().splitlines():
            code = line.split("#", 1)[0]
            assert "AWS_REGION" not in code and "AWS_DEFAULT_REGION" not in code, (path, line)


def test_every_placeholder_is_explained_in_the_readme():
    found = {
        m
        for path in CONFIGS + sorted((CLUSTER / "image").iterdir())
        for m in PLACEHOLDER.findall(path.read_text())
    }
    assert {"<your-bucket>", "<your-registry>"} <= found, found
    readme = (CLUSTER / "README.md").read_text()
    rows = dict(re.findall(r"^\|\s*`(<your-[a-z0-9-]+>)`\s*\|\s*([^|]{10,}?)\s*\|", readme, re.M))
    assert not sorted(found - set(rows)), "placeholders cluster/README.md does not explain"


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
    assert not {"pip", "conda", "uv", "py_executable"} & set(runtime_env), "code only"
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
