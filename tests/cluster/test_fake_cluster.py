"""The jobs on a simulated autoscaling multi-node cluster (tests/cluster/conftest.py): a head
with no CPUs for work, GPU and CPU worker types that start at zero.

- Device: with no device flag, train and segment plan GPUs because the autoscaler launches a
  GPU node when asked; a predictor scheduled on a fake GPU node fails fast (no CUDA there).
- Paths: local paths are refused before any work (exit 2, the flag named); --shared-fs lets
  them through.
- A real CPU segment run with S3 input and output: every mask written, predictor actors on
  more than one node (the manifest records each row's node).
- Secrets: the driver's AWS secret reaches no job's runtime_env or metadata.
"""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from tests.conftest import upload_tree
from tests.integration.inference.helpers import make_checkpoint
from unet_core.classes import ClassMap
from unet_core.synthetic import make_synthetic_dataset

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("labelled")
    make_synthetic_dataset(root, num_images=8, size=32, seed=0)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, labelled: Path) -> Path:
    class_map = ClassMap.from_json((labelled / "classes.json").read_text())
    return make_checkpoint(tmp_path_factory.mktemp("model") / "unet.pt", class_map, channels=3)


@pytest.fixture(scope="module")
def s3_images(s3_endpoint: str, tmp_path_factory) -> str:
    """24 images in a bucket: enough that two actors both get work."""
    root = tmp_path_factory.mktemp("many")
    make_synthetic_dataset(root, num_images=24, size=32, seed=1)
    bucket = f"fc-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    return upload_tree(root / "images", bucket, "images", s3_endpoint)


def test_dry_runs_plan_gpus_and_start_no_gpu_node(fake_cluster, labelled, checkpoint):
    fake_cluster.wait_idle()
    train = fake_cluster.run_job(
        "train.py", "--dry-run", "--shared-fs", "--data", str(labelled), "--num-workers", "2"
    )
    assert train.returncode == 0, train.describe()
    plan = train.final_json
    # without --device only a GPU node the autoscaler starts would tell: a dry run asks for none
    assert plan["device"] == "auto" and "decided when the job runs" in plan["device_reason"], plan
    assert plan["resources_per_worker"] == {"CPU": 1.0}
    assert plan["num_workers"] == 2
    assert plan["cluster"]["autoscaler"] == "v1" and plan["cluster"]["local"] is False
    assert plan["pairs"]["train"] + plan["pairs"]["val"] == 8
    assert plan["system_metrics"] is True  # on by default on a cluster
    assert plan["problems"] == []

    segment = fake_cluster.run_job(
        "segment.py",
        "--dry-run",
        "--shared-fs",
        "--device", "gpu",
        "--model", str(checkpoint),
        "--input", str(labelled / "images"),
        "--output", str(labelled.parent / "out-dry"),
    )  # fmt: skip
    assert segment.returncode == 0, segment.describe()
    plan = segment.final_json
    assert plan["device"] == "gpu" and plan["gpus_per_worker"] == 1.0, plan
    assert plan["fused"] is False  # GPU actors: decode and write run in CPU tasks beside them
    low, high = map(int, plan["num_workers"].split("-"))  # --num-workers MIN-MAX
    assert low == 1 and high > 1, plan
    assert (plan["inputs"], plan["to_process"], plan["skipped"]) == (8, 8, 0)
    assert not (labelled.parent / "out-dry").exists()  # a dry run writes nothing


def test_local_paths_are_refused_before_any_work(fake_cluster, labelled, checkpoint, tmp_path):
    out = tmp_path / "masks"
    segment = fake_cluster.run_job(
        "segment.py",
        "--model", str(checkpoint),
        "--input", str(labelled / "images"),
        "--output", str(out),
        "--num-gpus-per-actor", "0",
    )  # fmt: skip
    assert segment.returncode == 2, segment.describe()
    assert "--input" in segment.output and "--output" in segment.output
    assert "--shared-fs" in segment.output and "s3://" in segment.output
    assert not out.exists()

    train = fake_cluster.run_job("train.py", "--no-gpu", "--storage-path", str(tmp_path))
    assert train.returncode == 2, train.describe()
    assert "--data (omitted: the generated demo set)" in train.output
    assert "--storage-path" in train.output and "--tracking-uri" in train.output

    dry = fake_cluster.run_job("evaluate.py", "--dry-run", "--data", str(labelled))
    assert dry.returncode == 2, dry.describe()
    assert any("--data" in p for p in dry.final_json["problems"])


def test_segment_on_cpu_nodes_with_s3_spreads_actors(fake_cluster, s3_images, checkpoint):
    fake_cluster.wait_idle()
    output = s3_images.rsplit("/", 1)[0] + "/masks-cpu"
    run = fake_cluster.run_job(
        "segment.py",
        "--model", str(checkpoint),  # read on the driver, shipped through the object store
        "--input", s3_images,
        "--output", output,
        "--num-gpus-per-actor", "0",
        "--min-actors", "2",
        "--max-actors", "2",
        "--num-cpus-per-actor", "1.5",  # one actor per 2-CPU node: two nodes
        "--rows-per-call", "1",
        timeout=420,
    )  # fmt: skip
    assert run.returncode == 0, run.describe()
    summary = run.final_json
    assert (summary["total"], summary["ok"], summary["failed"]) == (24, 24, 0), summary
    bucket, _, prefix = output[len("s3://") :].partition("/")
    client = boto3.client("s3", endpoint_url=fake_cluster.env["AWS_ENDPOINT_URL"])
    body = client.get_object(Bucket=bucket, Key=f"{prefix}/manifest.parquet")["Body"].read()
    table = pq.read_table(io.BytesIO(body))
    nodes = set(table.column("predicted_on").to_pylist())
    assert None not in nodes and len(nodes) >= 2, (nodes, run.describe(200))
    assert "fffffffffffffffffffffffffffffffffffffffffffffffffff00000" not in nodes  # not the head


def test_a_fake_gpu_node_fails_fast_saying_it_has_no_cuda(fake_cluster, s3_images, checkpoint):
    output = s3_images.rsplit("/", 1)[0] + "/masks-gpu"
    run = fake_cluster.run_job(
        "segment.py",
        "--model", str(checkpoint),
        "--input", s3_images,
        "--output", output,
        "--num-gpus-per-actor", "1",
        "--max-actors", "1",
        timeout=300,
    )  # fmt: skip
    assert run.returncode not in (0, -1), run.describe()  # -1: timed out (a hang)
    assert "no usable CUDA device" in run.output, run.describe()


def test_no_secret_reaches_a_job(fake_cluster, labelled, checkpoint):
    """The AWS secret of a driver (and of the head, where submitted drivers run): in no job's
    runtime_env or metadata, for a driver that connects itself and for a submitted job."""
    fake_cluster.wait_idle()  # the job agent is looked up by node IP: fake nodes share the head's
    direct = fake_cluster.run_job(
        "segment.py",
        "--dry-run",
        "--shared-fs",
        "--device", "gpu",
        "--model", str(checkpoint),
        "--input", str(labelled / "images"),
        "--output", str(labelled.parent / "out-secret"),
        "--num-gpus-per-actor", "0",
    )  # fmt: skip
    assert direct.returncode == 0, direct.describe()
    # The dry run's listing tasks brought up a CPU node; fake nodes share the head's session
    # folder, and a node going away deletes the runtime_env files there, the next job's too.
    fake_cluster.wait_idle()
    submitted = fake_cluster.submit(
        ["python", "jobs/train.py", "--dry-run", "--no-gpu", "--data", "s3://nowhere/set"],
        runtime_env={"env_vars": {"AWS_REGION": "us-east-1"}},
    )
    assert "dry_run" in submitted.output, submitted.describe()  # it ran (problem: no data)
    jobs = fake_cluster.driver_jobs()
    assert {job["type"] for job in jobs} == {"DRIVER", "SUBMISSION"}, jobs
    blob = json.dumps(fake_cluster.jobs()) + json.dumps(jobs, default=str)
    assert "us-east-1" in blob  # runtime_envs are in there
    assert fake_cluster.secret not in blob


@pytest.fixture(scope="module")
def s3_labelled(s3_endpoint: str, labelled: Path) -> str:
    bucket = f"fc-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    return upload_tree(labelled, bucket, "set", s3_endpoint)


def test_elastic_cpu_training_from_s3_brings_up_its_nodes(fake_cluster, s3_labelled, tmp_path):
    """The head has no CPUs: the workers' placement group brings up CPU nodes, Ray Data's
    tasks run beside the workers, the run starts with the workers the cluster has ready (1-2)
    and finishes with the world size of the last group Ray Train started."""
    fake_cluster.wait_idle()
    bucket = s3_labelled[len("s3://") :].split("/")[0]
    run = fake_cluster.run_job(
        "train.py",
        "--run-name", "fc-elastic",
        "--data", s3_labelled,
        "--storage-path", f"s3://{bucket}/runs",
        "--shared-fs",  # the sqlite store below: the fake nodes do share this disk
        "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--no-gpu",
        "--num-workers", "1-2",
        "--epochs", "1",
        "--batch-size", "2",
        "--base-width", "4",
        "--depth", "2",
        "--crop-size", "0",
        "--no-augment",
        timeout=420,
    )  # fmt: skip
    assert run.returncode == 0, run.describe()
    summary = run.final_json
    assert summary["model_version"], summary
    # The sizes the cluster allowed, in order (the elastic policy's decisions from the
    # resources it found ready; a fixed-size run makes none), and the run trained with the
    # last of them: its summary and the epoch's logged world_size.
    sizes = fake_cluster.worker_group_sizes("fc-elastic")
    assert sizes and all(1 <= n <= 2 for n in sizes), (sizes, run.describe(200))
    assert summary["world_size"] == sizes[-1], (summary, sizes)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    logged = client.get_metric_history(summary["run_id"], "world_size")
    assert [m.value for m in logged] == [float(sizes[-1])], (logged, sizes)


def test_training_on_a_fake_gpu_node_fails_fast(fake_cluster, s3_labelled, tmp_path):
    bucket = s3_labelled[len("s3://") :].split("/")[0]
    run = fake_cluster.run_job(
        "train.py",
        "--data", s3_labelled,
        "--storage-path", f"s3://{bucket}/runs-gpu",
        "--shared-fs",
        "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--use-gpu",
        "--num-workers", "1",
        "--max-failures", "0",
        "--epochs", "1",
        "--base-width", "4",
        "--depth", "2",
        timeout=300,
    )  # fmt: skip
    assert run.returncode not in (0, -1), run.describe()  # -1: timed out (a hang)
    assert "no usable CUDA device" in run.output, run.describe()
