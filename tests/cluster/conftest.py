"""A simulated autoscaling multi-node Ray cluster on this machine, shaped like cluster/kuberay.

`ray start --head --autoscaling-config CFG` with RAY_FAKE_CLUSTER=1 and Ray's `fake_multinode`
provider: the head offers no CPUs or GPUs for work (like the KubeRay head), and the autoscaler
launches worker nodes of two types on demand, each min 0, max 2:

- `gpu_worker`: {CPU: 2, GPU: 1} (a fake GPU: the node has no CUDA device)
- `cpu_worker`: {CPU: 2}

CUDA is hidden from every process of the cluster (CUDA_VISIBLE_DEVICES=-1: Ray counts the one
entry as the fake node's GPU, torch sees no device), so that a fake GPU node has no usable CUDA
on a GPU machine too, and no CPU node uses the machine's GPU. An empty value would not do: Ray
refuses to start a node with more GPUs than CUDA_VISIBLE_DEVICES lists.

A launched node is a real raylet on 127.0.0.1 that joins in a few seconds. The head runs in its
own HOME and temp dir (no token left in the user's ~/.ray), in its own process group, and is
stopped by SIGTERM to its leader, then by process group and by the marker path (never
`ray stop`, which would kill every Ray on the machine).
`ray.cluster_utils.AutoscalingCluster` is not used: it needs an example.yaml that the 2.60 wheel
lacks and runs `ray stop --force`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
import yaml

from tests.servers import (
    LOOPBACK,
    VENV_BIN,
    JobRun,
    child_env,
    free_port,
    serving,
)
from tests.support import REPO_ROOT, missing

WORKER_TYPES = {
    "gpu_worker": {"resources": {"CPU": 2, "GPU": 1}, "min_workers": 0, "max_workers": 2},
    "cpu_worker": {"resources": {"CPU": 2}, "min_workers": 0, "max_workers": 2},
}
HIDDEN_CUDA = "-1"
"""CUDA_VISIBLE_DEVICES of the cluster's processes (the module docstring says why)."""


def autoscaling_config(gcs_port: int) -> dict:
    """The cluster config the fake provider reads (the keys the launcher's schema requires)."""
    types = {name: {**spec, "node_config": {}} for name, spec in WORKER_TYPES.items()}
    types["ray.head.default"] = {
        "resources": {"CPU": 0, "GPU": 0},
        "node_config": {},
        "max_workers": 0,
    }
    return {
        "cluster_name": "unet-fake",
        "max_workers": 4,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.25,
        "provider": {
            "type": "fake_multinode",
            "gcs_address": f"{LOOPBACK}:{gcs_port}",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "head_node_type": "ray.head.default",
        "available_node_types": types,
        "auth": {"ssh_user": "ubuntu"},
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


@dataclass
class FakeCluster:
    address: str
    """GCS address (what --ray-address / $RAY_ADDRESS take)."""
    secret: str
    """The nodes' (and the drivers') AWS secret key: a unique value that no job may carry."""
    dashboard_url: str
    root: Path
    env: dict[str, str] = field(repr=False)
    """Environment of a driver on this cluster (its HOME, loopback only, the S3 endpoint)."""

    def run_job(
        self, script: str, *args: str, env: dict[str, str] | None = None, timeout: float = 300
    ) -> JobRun:
        """`python jobs/<script> --ray-address ADDRESS ARGS...` as a driver on this machine."""
        cmd = [str(VENV_BIN / "python"), f"jobs/{script}", "--ray-address", self.address, *args]
        return JobRun.run(cmd, cwd=REPO_ROOT, env={**self.env, **(env or {})}, timeout=timeout)

    def submit(self, entrypoint: list[str], *, runtime_env: dict, timeout: float = 300) -> JobRun:
        """`ray job submit --working-dir . --runtime-env-json ... -- ENTRYPOINT`."""
        cmd = [
            str(VENV_BIN / "ray"), "job", "submit",
            "--address", self.dashboard_url,
            "--working-dir", ".",
            "--runtime-env-json", json.dumps(runtime_env),
            "--", *entrypoint,
        ]  # fmt: skip
        return JobRun.run(cmd, cwd=REPO_ROOT, env=self.env, timeout=timeout)

    def jobs(self) -> list[dict]:
        """Every job of the cluster (submitted and driver jobs), from the job REST API."""
        response = requests.get(f"{self.dashboard_url}/api/jobs/", timeout=10)
        response.raise_for_status()
        return response.json()

    def driver_jobs(self) -> list[dict]:
        """Every job with its config (runtime_env included), from the state API."""
        from ray.util.state import list_jobs

        return [job.__dict__ for job in list_jobs(address=self.dashboard_url, detail=True)]

    def status(self) -> dict:
        """The autoscaler's published status (the GCS key `ray status` reads)."""
        out = subprocess.run(
            [str(VENV_BIN / "python"), "-c", _STATUS_SCRIPT, self.address],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    def worker_group_sizes(self, run_name: str) -> list[int]:
        """The worker-group sizes Ray Train's controller started the run `run_name` with, in
        order: its elastic policy's decisions from the resources the cluster had ready
        ("Detected ready resources for N workers ... Deciding to start/restart training"), read
        from the controller's structured log (logs/train/ in the head's session folder)."""
        records = []
        for path in (self.root / "ray").glob("session_*/logs/train/ray-train-sys-controller-*"):
            for line in path.read_text(errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                match = _STARTED.search(record.get("message", ""))
                if match and record.get("run_name") == run_name:
                    records.append((record.get("timestamp_ns", 0), int(match.group(1))))
        return [size for _, size in sorted(records)]

    def wait_idle(self, timeout: float = 120) -> None:
        """Wait until no worker node is left from an earlier test (idle nodes time out after a
        15 s), so each test starts from a cluster at zero."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.status()["nodes"] <= 1:
                return
            time.sleep(2)


_STARTED = re.compile(
    r"Detected ready resources for (\d+) workers.*Deciding to start/restart training", re.S
)

_STATUS_SCRIPT = """
import json, sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
nodes = [n for n in ray.nodes() if n["Alive"]]
print(json.dumps({"nodes": len(nodes), "resources": ray.cluster_resources()}))
"""


@pytest.fixture(scope="package")
def fake_cluster(s3_endpoint: str) -> Iterator[FakeCluster]:
    """The cluster, from the first test of tests/cluster/ that asks for it to the end of the
    folder's tests (scope="package": not held while the other folders run)."""
    if not (VENV_BIN / "ray").exists():
        missing(f"no `ray` CLI beside {VENV_BIN}: run pytest from the project's venv")
    root = Path(tempfile.mkdtemp(prefix="unet-fc-", dir="/tmp"))  # short: Ray's socket paths
    home = root / "home"
    home.mkdir()
    gcs_port, dashboard_port = free_port(), free_port()
    config = root / "autoscaling.yaml"
    config.write_text(yaml.safe_dump(autoscaling_config(gcs_port), sort_keys=False))
    secret = f"fake-secret-{uuid.uuid4().hex}"  # moto takes any key
    s3_env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_endpoint,
    }
    # The head's processes (and the fake nodes the autoscaler starts) inherit this environment:
    # the nodes' own "instance credentials" for the local S3 endpoint.
    env = child_env(
        HOME=str(home),
        RAY_FAKE_CLUSTER="1",
        AUTOSCALER_UPDATE_INTERVAL_S="1",
        CUDA_VISIBLE_DEVICES=HIDDEN_CUDA,
        **s3_env,
    )
    cmd = [
        str(VENV_BIN / "ray"), "start", "--head", "--block",
        f"--port={gcs_port}",
        f"--node-ip-address={LOOPBACK}",
        "--num-cpus=0",
        "--num-gpus=0",
        f"--autoscaling-config={config}",
        f"--temp-dir={root / 'ray'}",
        f"--dashboard-host={LOOPBACK}",
        f"--dashboard-port={dashboard_port}",
        # Own ports: another Ray on this machine (a developer's, a test's) holds the defaults.
        *(
            f"--{name}={free_port()}"
            for name in (
                "ray-client-server-port",
                "dashboard-agent-listen-port",
                "dashboard-agent-grpc-port",
                "runtime-env-agent-port",
                "metrics-export-port",
                "node-manager-port",
                "object-manager-port",
            )
        ),
        "--object-store-memory=200000000",
        "--disable-usage-stats",
    ]  # fmt: skip
    url = f"http://{LOOPBACK}:{dashboard_port}"
    # Drivers connect from "outside", with the same (node) environment minus the fake flag.
    driver_env = {k: v for k, v in env.items() if k != "RAY_FAKE_CLUSTER"}
    try:
        with serving(
            cmd,
            cwd=root,
            env=env,
            log=root / "head.log",
            ready=lambda: requests.get(f"{url}/api/version", timeout=2).status_code == 200,
            what="fake cluster head",
            timeout=120,
            marker=str(root),
        ):
            yield FakeCluster(f"{LOOPBACK}:{gcs_port}", secret, url, root, driver_env)
    finally:
        shutil.rmtree(root, ignore_errors=True)
