"""Fault tolerance: a training worker killed mid-run is replaced and the run resumes from its
last checkpoint; a resubmitted run with the same name resumes too. Each epoch is logged once.

The test (not the product) kills the worker: it finds the Ray Train worker processes among the
descendants of this test process (the local Ray's raylet is its child) and sends SIGKILL once
the first checkpoint exists in the run's storage.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from jobs.train import main
from jobs.training.worker_loop import RESUMED_TAG

pytestmark = pytest.mark.integration


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line), from /proc."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        out[int(entry.name)] = (ppid, cmdline)
    return out


def training_workers() -> list[int]:
    """PIDs of Ray Train workers descended from this process (never another user's Ray)."""
    procs = _processes()
    mine, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, (ppid, _) in procs.items() if ppid in frontier} - mine
        mine |= frontier
    return sorted(pid for pid in mine if procs[pid][1].startswith("ray::RayTrainWorker"))


def steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_killed_worker_and_resubmission_resume(
    ray_local, mlflow_uri, synthetic_root, tmp_path, monkeypatch, capsys
):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    storage, name, epochs = tmp_path / "runs", "it-fault", 6
    argv = [
        "--data", str(synthetic_root), "--run-name", name, "--storage-path", str(storage),
        "--base-width", "8", "--depth", "2", "--norm", "group", "--batch-size", "2",
        "--max-failures", "2", "--num-workers", "2",
    ]  # fmt: skip
    codes: list[int] = []
    job = threading.Thread(target=lambda: codes.append(main([*argv, "--epochs", str(epochs)])))
    job.start()
    killed = None
    deadline = time.monotonic() + 240
    while job.is_alive() and time.monotonic() < deadline:
        workers = training_workers()
        # the snapshot appears once the controller has registered a reported checkpoint
        if len(workers) == 2 and (storage / name / "checkpoint_manager_snapshot.json").exists():
            killed = workers[-1]
            os.kill(killed, signal.SIGKILL)
            break
        time.sleep(0.02)
    job.join(timeout=300)
    assert killed is not None, "training ended before a worker could be killed"
    assert codes == [0]
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    client = MlflowClient()
    run = client.get_run(first["run_id"])
    assert run.data.tags.get(RESUMED_TAG), "the run did not restart from a checkpoint"
    assert killed not in training_workers()
    for key in ("epoch", "train_loss", "val_miou"):
        assert steps(client, first["run_id"], key) == list(range(1, epochs + 1)), key

    # resubmitting the finished run with the same name and more epochs continues it
    assert main([*argv, "--epochs", str(epochs + 1)]) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert second["run_id"] == first["run_id"] and second["epochs"] == epochs + 1
    assert steps(client, first["run_id"], "val_miou") == list(range(1, epochs + 2))
    resumed = client.get_run(first["run_id"]).data.tags[RESUMED_TAG].split(",")
    assert resumed[-1] == str(epochs)
