"""Elastic training (`--num-workers MIN-MAX`) on a local Ray: a run starts with the workers the
cluster has room for, and a run resumed at another world size stays on its learning-rate curve.

The first run (2 workers fit) is stopped after its first checkpoint by killing a worker with
--max-failures 0, as tests/integration/training/test_train_fault_tolerance.py kills one; the
rerun asks 5 CPUs per worker, so on the test's 8-CPU Ray only one fits, and Ray Train's elastic
policy starts it with that one (a fixed 2 would wait for CPUs that never come).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from jobs.train import main
from jobs.training.worker_loop import RESUMED_TAG
from tests.integration.training.test_train import TINY
from tests.integration.training.test_train_fault_tolerance import training_workers
from unet_core.schedule import lr_factor

pytestmark = pytest.mark.integration


def test_elastic_run_starts_with_what_fits_and_resumes_at_another_size(
    ray_local, mlflow_uri, synthetic_root, tmp_path, monkeypatch, capsys
):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # MLflow keeps artifacts under ./mlruns
    storage, name, epochs, lr = tmp_path / "runs", "it-elastic", 3, 1e-2
    argv = ["--data", str(synthetic_root), "--num-workers", "1-2", "--epochs", str(epochs),
            "--lr", str(lr), "--warmup-epochs", "1", "--run-name", name,
            "--storage-path", str(storage), *TINY]  # fmt: skip

    codes: list[int] = []
    job = threading.Thread(target=lambda: codes.append(main([*argv, "--max-failures", "0"])))
    job.start()
    killed = None
    deadline = time.monotonic() + 240
    while job.is_alive() and time.monotonic() < deadline:
        workers = training_workers()
        if len(workers) == 2 and (storage / name / "checkpoint_manager_snapshot.json").exists():
            killed = workers[-1]
            os.kill(killed, signal.SIGKILL)
            break
        time.sleep(0.02)
    job.join(timeout=300)
    assert not job.is_alive(), "the first run did not end within 300 s of the kill"
    assert killed is not None, "no worker was killed: training ended or 240 s passed first"
    assert codes == [3]  # no failure allowed: the run stops (unexpectedly) with its checkpoints
    capsys.readouterr()

    code = main([*argv, "--cpus-per-worker", "5"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["num_workers"] == "1-2" and summary["world_size"] == 1
    assert summary["epochs"] == epochs

    client = MlflowClient()
    run = client.get_run(summary["run_id"])
    resumed = int(run.data.tags[RESUMED_TAG])
    assert 1 <= resumed < epochs
    assert run.data.params["num_workers"] == "1-2"
    assert run.data.params["global_batch_size"] == "4-8"

    def logged(key: str) -> list[float]:
        history = client.get_metric_history(run.info.run_id, key)
        return [m.value for m in sorted(history, key=lambda m: m.step)]

    # What the cluster allowed, epoch by epoch: 2 workers until the checkpoint the rerun
    # resumed from, then the 1 that fits at 5 CPUs each. An epoch the first run logged after
    # its last checkpoint (the kill landed between the two) keeps its first value: the epoch
    # logger writes an epoch once.
    sizes = logged("world_size")
    assert len(sizes) == epochs and sizes[:resumed] == [2.0] * resumed and sizes[-1] == 1.0
    assert sizes == sorted(sizes, reverse=True), sizes
    train_rows = int(run.data.params["train_rows"])
    assert logged("train_images")[-1] == train_rows  # one worker: no remainder dropped
    # The lr after each epoch is the curve's value at that epoch whatever the world size that
    # trained it (half the steps per epoch at 2 workers as at 1): a step counter restored at 1
    # worker would have put the resumed run half an epoch behind for each epoch done.
    expected = [lr * lr_factor(e, epochs=epochs, warmup_epochs=1.0) for e in range(1, epochs + 1)]
    assert logged("lr") == pytest.approx(expected, rel=1e-6)
    assert expected[0] == pytest.approx(lr) and expected[-1] == pytest.approx(lr * 0.01)
