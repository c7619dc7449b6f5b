"""Cluster rules that need no Ray: which paths a cluster refuses, the GPU choice from a view,
and which driver settings are forwarded to tasks (never credentials)."""

from __future__ import annotations

import pytest

from jobs.common import ray_cluster
from jobs.common.cluster_info import ClusterView, choose_gpu, runs_an_autoscaler
from jobs.common.path_guard import LocalPathError, is_local, refuse_local_paths

LOCAL = ClusterView(local=True, nodes=1, resources={"CPU": 4}, local_cores=2)
FIXED_ONE_NODE = ClusterView(local=False, nodes=1, resources={"CPU": 8})
MULTI = ClusterView(local=False, nodes=3, resources={"CPU": 24})
AUTOSCALING = ClusterView(local=False, nodes=1, resources={}, autoscaler="v1")


def test_local_and_remote_locations():
    assert is_local("/data/set") and is_local("relative/dir") and is_local("file:///x")
    assert is_local("sqlite:////tmp/mlflow.db")
    assert not is_local("s3://bucket/set") and not is_local("http://mlflow:5000")


def test_local_paths_refused_on_multi_node_and_autoscaling_clusters():
    paths = {"--data": "/data/set", "--output": "s3://b/out", "--tracking-uri": "sqlite:///m.db"}
    for view in (MULTI, AUTOSCALING):
        with pytest.raises(LocalPathError) as info:
            refuse_local_paths(view, paths, shared_fs=False)
        message = str(info.value)
        assert "--data /data/set" in message and "s3://bucket/prefix" in message
        assert "--tracking-uri sqlite:///m.db" in message and "MLflow server" in message
        assert "--output" not in message  # remote: fine
        assert "--shared-fs" in message
    # a mount every node sees, a local Ray, a one-node cluster without autoscaler: allowed
    refuse_local_paths(MULTI, paths, shared_fs=True)
    refuse_local_paths(LOCAL, paths, shared_fs=False)
    refuse_local_paths(FIXED_ONE_NODE, paths, shared_fs=False)
    refuse_local_paths(MULTI, {"--val-data": None}, shared_fs=False)  # unset flags


def test_gpu_choice_from_the_view(monkeypatch):
    assert choose_gpu(MULTI, True, what="x").use_gpu is True  # the flag wins
    assert choose_gpu(MULTI, False, what="x").use_gpu is False
    with_gpus = ClusterView(local=False, nodes=2, resources={"CPU": 8, "GPU": 2})
    assert choose_gpu(with_gpus, None, what="x").use_gpu is True
    config_gpus = ClusterView(
        local=False, nodes=1, resources={}, autoscaler="v2", max_resources={"GPU": 8}
    )
    choice = choose_gpu(config_gpus, None, what="x")
    assert choice.use_gpu and "up to 8 GPUs" in choice.reason
    config_cpu_only = ClusterView(
        local=False, nodes=1, resources={}, autoscaler="v2", max_resources={"CPU": 64}
    )
    assert choose_gpu(config_cpu_only, None, what="x").use_gpu is False
    assert choose_gpu(MULTI, None, what="x").use_gpu is False  # fixed, no GPUs
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert choose_gpu(LOCAL, None, what="x").use_gpu is True  # local: this machine's CUDA


def test_a_dry_run_never_asks_the_autoscaler_for_a_gpu_node(monkeypatch):
    from jobs.common import cluster_info

    asked = []
    monkeypatch.setattr(cluster_info, "probe_autoscaler_gpu", lambda view: asked.append(view))
    choice = choose_gpu(AUTOSCALING, None, what="x", probe=False)
    assert (
        not choice.decided and not choice.use_gpu and "decided when the job runs" in choice.reason
    )
    assert not asked
    assert choose_gpu(AUTOSCALING, True, what="x", probe=False).decided  # the flag decides
    choose_gpu(AUTOSCALING, None, what="x")
    assert asked == [AUTOSCALING]  # a real run asks


def test_only_settings_are_forwarded_never_credentials(monkeypatch):
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    for key, value in {
        "AWS_ACCESS_KEY_ID": "AKIA-test",
        "AWS_SECRET_ACCESS_KEY": "s3cret",
        "AWS_SESSION_TOKEN": "token",
        "AWS_REGION": "eu-west-1",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
    }.items():
        monkeypatch.setenv(key, value)
    env = ray_cluster.forwarded_env()
    assert env["AWS_REGION"] == "eu-west-1" and env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"} & set(env)
    assert "s3cret" not in str(ray_cluster.data_remote_args())


def test_a_plain_head_is_not_an_autoscaling_cluster():
    """Statuses as Ray 2.60 publishes them (seen on this machine): `ray start --head` without
    an autoscaling config mirrors its nodes with the read-only provider; the fake_multinode
    cluster of tests/cluster maps nodes to the configured types."""
    node = "7a545e374e8ef4f9496fb7db4927d4dd3361939391a978c0d60fa8d6"
    plain = {"autoscaler_report": {"node_type_mapping": {node: f"node_{node}"}, "legacy": True}}
    assert not runs_an_autoscaler(plain)
    assert not runs_an_autoscaler(None) and not runs_an_autoscaler({"time": 1.0})
    head = "f" * 51 + "00000"
    fake = {"autoscaler_report": {"node_type_mapping": {head: "ray.head.default"}}}
    assert runs_an_autoscaler(fake)
