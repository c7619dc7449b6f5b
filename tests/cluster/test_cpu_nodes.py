"""Which node types a segment run brings up on the simulated cluster (tests/cluster/conftest.py:
a head with no CPUs for work, `cpu_worker` {CPU: 2} and `gpu_worker` {CPU: 2, GPU: 1}, both
from zero).

CPU work (listing the input, deciding the work list, decoding, writing) starts CPU nodes only:
Ray's autoscaler prefers a node type without GPUs for demand that asks for none
(AUTOSCALER_CONSERVE_GPU_NODES, on by default: ray/autoscaler/_private/
resource_demand_scheduler.py), while such a type has room (max_workers). A GPU node starts for
model work only: with --device gpu, one per predictor actor, and the actor lands there (and
fails fast: the fake GPU has no CUDA). Nothing keeps CPU tasks off a GPU node that is already up
(Ray Data spreads its tasks over every node with free CPUs); the test does not claim it.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from ray.util.state import list_jobs, list_nodes, list_tasks

from tests.conftest import upload_tree
from tests.integration.inference.helpers import make_checkpoint
from unet_core.classes import ClassMap
from unet_core.synthetic import make_synthetic_dataset

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

LISTING_TASKS = ("_list_group", "shards")
"""Function names of the segment job's listing tasks (jobs/segmenting/listing.py)."""


@dataclass(frozen=True)
class Node:
    node_id: str
    gpu: bool
    """The node declares GPUs (a `gpu_worker`)."""


def nodes(cluster) -> dict[str, Node]:
    """Every worker node the cluster has started, alive or gone (the head left out)."""
    found = list_nodes(address=cluster.dashboard_url, detail=True, limit=1000)
    return {
        n.node_id: Node(n.node_id, n.resources_total.get("GPU", 0) > 0)
        for n in found
        if not n.is_head_node
    }


def job_ids(cluster) -> set[str]:
    return {job.job_id for job in list_jobs(address=cluster.dashboard_url) if job.job_id}


def tasks_of(cluster, jobs: set[str]) -> list:
    """Every task and actor-creation task of the jobs ``jobs``, with the node it ran on."""
    found = []
    for job in jobs:
        found += list_tasks(
            address=cluster.dashboard_url,
            filters=[("job_id", "=", job)],
            detail=True,
            limit=10000,
            raise_on_missing_output=False,
        )
    return found


@dataclass(frozen=True)
class Inputs:
    images: str
    """s3:// prefix of 12 small images."""
    checkpoint: Path
    """A model checkpoint for them (read on the driver)."""


@pytest.fixture(scope="module")
def inputs(s3_endpoint: str, tmp_path_factory) -> Inputs:
    root = tmp_path_factory.mktemp("cpu-nodes")
    make_synthetic_dataset(root, num_images=12, size=32, seed=2)
    class_map = ClassMap.from_json((root / "classes.json").read_text())
    checkpoint = make_checkpoint(root / "unet.pt", class_map, channels=3)
    bucket = f"cn-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    return Inputs(upload_tree(root / "images", bucket, "images", s3_endpoint), checkpoint)


def test_cpu_work_starts_cpu_nodes_and_model_work_a_gpu_node(fake_cluster, inputs):
    fake_cluster.wait_idle()
    prefix = inputs.images.rsplit("/", 1)[0]
    model_and_input = ["--model", str(inputs.checkpoint), "--input", inputs.images]

    # Listing and deciding only (a dry run that plans GPU actors): CPU nodes come up, no GPU.
    # --device gpu: the plan shows GPU actors (without it a dry run leaves the device "auto").
    before = nodes(fake_cluster)
    dry = fake_cluster.run_job(
        "segment.py", "--dry-run", "--device", "gpu", *model_and_input,
        "--output", f"{prefix}/masks-dry",
    )  # fmt: skip
    assert dry.returncode == 0, dry.describe()
    assert dry.final_json["gpus_per_worker"] == 1.0, dry.final_json  # GPUs planned
    assert dry.final_json["inputs"] == 12, dry.final_json
    started = [n for i, n in nodes(fake_cluster).items() if i not in before]
    assert started, "the listing tasks brought up no node (the head has no CPUs)"
    assert not [n for n in started if n.gpu], (started, dry.describe(100))

    # The staged pipeline on CPU (decode tasks, an actor, encode/write tasks): every mask
    # written, CPU nodes only, the decode tasks ran on them.
    before, jobs = nodes(fake_cluster), job_ids(fake_cluster)
    cpu = fake_cluster.run_job(
        "segment.py", "--device", "cpu", "--no-fused", "--num-workers", "1", *model_and_input,
        "--output", f"{prefix}/masks-cpu",
        timeout=420,
    )  # fmt: skip
    assert cpu.returncode == 0, cpu.describe()
    assert (cpu.final_json["total"], cpu.final_json["ok"]) == (12, 12), cpu.final_json
    every = nodes(fake_cluster)
    assert not [n for i, n in every.items() if n.gpu and i not in before], every
    tasks = tasks_of(fake_cluster, job_ids(fake_cluster) - jobs)
    decode = [t for t in tasks if "decode_images" in t.name]
    assert decode, sorted({t.name for t in tasks})
    assert not [t for t in decode if t.node_id not in every or every[t.node_id].gpu], decode

    # GPU actors: one GPU node starts for the one predictor actor, which is created there (and
    # fails: the fake GPU has no CUDA); the listing tasks ran on CPU nodes.
    before, jobs = nodes(fake_cluster), job_ids(fake_cluster)
    run = fake_cluster.run_job(
        "segment.py", "--device", "gpu", "--num-workers", "1", *model_and_input,
        "--output", f"{prefix}/masks-gpu",
        timeout=300,
    )  # fmt: skip
    assert run.returncode not in (0, -1), run.describe()  # -1: timed out (a hang)
    assert "no usable CUDA device" in run.output, run.describe()
    every = nodes(fake_cluster)
    gpu_nodes = {i for i, n in every.items() if n.gpu and i not in before}
    assert len(gpu_nodes) == 1, (every, run.describe(100))  # one actor, one GPU node
    # The actor's error names the node it was created on (jobs/common/devices.py).
    actor_nodes = set(re.findall(r"scheduled on node ([0-9a-f]+) with GPU", run.output))
    assert actor_nodes and actor_nodes <= gpu_nodes, (actor_nodes, gpu_nodes, run.describe(60))
    tasks = tasks_of(fake_cluster, job_ids(fake_cluster) - jobs)
    listing = [t for t in tasks if t.func_or_class_name.split(".")[-1] in LISTING_TASKS]
    assert listing, sorted({t.func_or_class_name for t in tasks})
    on = {t.node_id for t in listing}
    assert None not in on and not any(every[i].gpu for i in on), (on, every)
