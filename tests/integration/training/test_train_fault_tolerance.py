"""Fault tolerance: a training worker killed mid-run is replaced and the run resumes from its
last checkpoint; a resubmitted run with the same name resumes too. Each epoch is logged once.

The test (not the product) kills the worker: it finds the Ray Train worker processes among the
descendants of this test process (the local Ray's raylet is its child) and sends SIGKILL once
the first checkpoint exists in the run's storage. That the worker group was really replaced is
read twice: a poller records every Ray Train worker pid that existed during the run (a new
group means new processes), and Ray Train's own record of the run's attempts (its state actor,
on with RAY_TRAIN_ENABLE_STATE_TRACKING for this test) says which attempt failed, with which
workers, and which one finished.
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


class WorkerPoller(threading.Thread):
    """Records every Ray Train worker pid seen (and when first seen) until stopped; an error in
    the poller is kept and re-raised by `stop`, never swallowed."""

    def __init__(self, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.first_seen: dict[int, float] = {}
        self._stop_event = threading.Event()
        self._error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self._stop_event.is_set():
                for pid in training_workers():
                    self.first_seen.setdefault(pid, time.monotonic())
                self._stop_event.wait(self.interval)
        except BaseException as exc:  # kept, and re-raised in the test's thread by stop()
            self._error = exc

    def stop(self) -> set[int]:
        self._stop_event.set()
        self.join(timeout=30)
        assert not self.is_alive(), "the worker poller did not stop"
        if self._error is not None:
            raise AssertionError("the worker poller failed") from self._error
        return set(self.first_seen)


def status(record) -> str:
    """A Ray Train run's or attempt's status as a plain string ("FINISHED", "ERRORED", ...)."""
    return str(getattr(record.status, "value", record.status))


def train_attempts(run_name: str, since_ns: int) -> list[tuple[object, list[object]]]:
    """Ray Train's own record (Train V2 state actor) of the runs named ``run_name`` started
    after ``since_ns``: [(run, [attempts in order])], oldest run first."""
    import ray
    from ray.train.v2._internal.state.state_actor import get_state_actor

    actor = get_state_actor()
    assert actor is not None, "no Ray Train state actor: is RAY_TRAIN_ENABLE_STATE_TRACKING on?"
    runs = ray.get(actor.get_train_runs.remote(), timeout=60)
    attempts = ray.get(actor.get_train_run_attempts.remote(), timeout=60)
    mine = sorted(
        (r for r in runs.values() if r.name == run_name and r.start_time_ns >= since_ns),
        key=lambda r: r.start_time_ns,
    )
    return [(r, list(attempts.get(r.id, {}).values())) for r in mine]


def test_killed_worker_and_resubmission_resume(
    ray_local, mlflow_uri, synthetic_root, tmp_path, monkeypatch, capsys
):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    # Ray Train's bookkeeping of runs and attempts (read by the driver at trainer creation)
    monkeypatch.setenv("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")
    storage, name, epochs, workers_per_group = tmp_path / "runs", "it-fault", 6, 2
    argv = [
        "--data", str(synthetic_root), "--run-name", name, "--storage-path", str(storage),
        "--base-width", "8", "--depth", "2", "--norm", "group", "--batch-size", "2",
        "--max-failures", "2", "--num-workers", str(workers_per_group),
    ]  # fmt: skip
    since = time.time_ns()
    codes: list[int] = []
    job = threading.Thread(target=lambda: codes.append(main([*argv, "--epochs", str(epochs)])))
    poller = WorkerPoller()
    poller.start()
    try:
        job.start()
        killed = None
        deadline = time.monotonic() + 240
        while job.is_alive() and time.monotonic() < deadline:
            workers = training_workers()
            # the snapshot appears once the controller has registered a reported checkpoint
            snapshot = (storage / name / "checkpoint_manager_snapshot.json").exists()
            if len(workers) == workers_per_group and snapshot:
                killed = workers[-1]
                os.kill(killed, signal.SIGKILL)
                break
            time.sleep(0.02)
        job.join(timeout=300)
    finally:
        seen = poller.stop()
    assert not job.is_alive(), "the training job did not end within 300 s of the kill"
    assert killed is not None, "no worker was killed: training ended or 240 s passed first"
    assert codes == [0]
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    client = MlflowClient()
    run = client.get_run(first["run_id"])
    assert run.data.tags.get(RESUMED_TAG), "the run did not restart from a checkpoint"
    for key in ("epoch", "train_loss", "val_miou"):
        assert steps(client, first["run_id"], key) == list(range(1, epochs + 1)), key

    # The worker group was replaced: Ray Train recorded two attempts of the run, the first
    # failed with the killed worker among its workers, the second (all new processes) finished.
    ((train_run, attempts),) = train_attempts(name, since)
    assert status(train_run) == "FINISHED", train_run
    assert [status(a) for a in attempts] == ["ERRORED", "FINISHED"], attempts
    groups = [{w.pid for w in a.workers} for a in attempts]
    assert [len(g) for g in groups] == [workers_per_group] * 2, groups
    assert killed in groups[0] and not groups[0] & groups[1], (killed, groups)
    # ...and the poller saw both groups' processes: more distinct worker pids than one group has,
    # the new group's appearing after the killed one's.
    assert len(seen) > workers_per_group and seen >= groups[0] | groups[1], (seen, groups)
    assert min(poller.first_seen[p] for p in groups[1]) > poller.first_seen[killed]

    # resubmitting the finished run with the same name and more epochs continues it
    assert main([*argv, "--epochs", str(epochs + 1)]) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert second["run_id"] == first["run_id"] and second["epochs"] == epochs + 1
    assert steps(client, first["run_id"], "val_miou") == list(range(1, epochs + 2))
    resumed = client.get_run(first["run_id"]).data.tags[RESUMED_TAG].split(",")
    assert resumed[-1] == str(epochs)
    # a new Ray Train run (same name), one attempt, no failure
    runs = train_attempts(name, since)
    assert len(runs) == 2 and [status(a) for a in runs[1][1]] == ["FINISHED"], runs
