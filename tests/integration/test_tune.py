"""`unet-tune` end to end: a local Ray, a sqlite MLflow, tiny synthetic images, four trials.

The space makes ASHA's decisions certain: a grid over lr runs one trial that learns (lr 2e-2)
and then three that cannot (lr 1e-7, the same seed: the same figures). ASHA (grace 1 epoch,
reduction factor 2, one trial at a time) keeps a trial at a rung only when it is no worse than
the middle of the trials that reached that rung before it: trials 2 and 3 stop after epoch 1,
trial 4 (tied with 2 and 3 at epoch 1) after epoch 2. So three trials stop early.

On Ray 2.60 a trial ASHA stops keeps its workers' placement group (ray-project/ray#54305:
Ray Train's cleaner does not remove it), so the next trial that needs those CPUs would wait
forever. Each trial's worker here takes 1 of the local Ray's 8 CPUs, so the three stopped
trials' groups fit beside the running one; when Tune returns, the search removes the groups its
job still holds (`jobs.tuning.leaks`), and every CPU is back.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from jobs.tune import main

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

EPOCHS = 4
WORKER_CPUS = 1  # of the local Ray's 8: stopped trials' groups fit until the search ends


@pytest.fixture
def tiny_root(tmp_path_factory):
    from unet_core.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("tune-data")
    make_synthetic_dataset(root, num_images=24, size=(24, 32), seed=3)
    return root


def search(root: Path, tmp: Path, space: Path, capsys) -> tuple[int, dict]:
    code = main(
        ["--data", str(root), "--search-space", str(space), "--trials", "1",
         "--max-concurrent-trials", "1", "--grace-epochs", "1", "--epochs", str(EPOCHS),
         "--num-workers", "1", "--cpus-per-worker", str(WORKER_CPUS), "--warmup-epochs", "0",
         "--base-width", "4", "--depth", "2", "--norm", "group", "--batch-size", "4",
         "--crop-size", "0", "--amp", "off", "--run-name", "it-search",
         "--storage-path", str(tmp / "runs")]
    )  # fmt: skip
    lines = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(lines[-1])


def resources_back(ray, timeout: float = 30.0) -> tuple[float, float, list]:
    """(CPUs available, CPUs of the cluster, placement groups still CREATED), once they agree
    or ``timeout`` s have passed (a removed placement group frees its CPUs asynchronously)."""
    from ray.util import placement_group_table

    deadline = time.time() + timeout
    while True:
        created = [pg for pg in placement_group_table().values() if pg["state"] == "CREATED"]
        free, total = ray.available_resources().get("CPU", 0), ray.cluster_resources()["CPU"]
        if (free == total and not created) or time.time() > deadline:
            return free, total, created
        time.sleep(0.5)


def test_search_stops_weak_trials_logs_children_registers_best_and_frees_resources(
    ray_local, mlflow_uri, tiny_root, tmp_path, monkeypatch, capsys
):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # MLflow keeps artifacts under ./mlruns
    space = tmp_path / "space.yaml"
    space.write_text("lr: {grid: [2.0e-2, 1.0e-7, 1.0e-7, 1.0e-7]}\nclass_balance: 0\n")
    code, summary = search(tiny_root, tmp_path, space, capsys)
    assert code == 0, summary

    # every trial ran to the end of its search: none left PENDING behind a kept placement group
    assert summary["trials"] == 4
    assert summary["trial_states"] == {"TERMINATED": 4}
    epochs = {row["config"]["lr"]: [] for row in summary["table"]}
    for row in summary["table"]:
        epochs[row["config"]["lr"]].append(row["epochs"])
    assert epochs == {2e-2: [EPOCHS], 1e-7: [1, 1, 2]}, summary["table"]
    assert summary["stopped_early"] == 3

    # the best trial is the one that learnt, and it is registered with the alias
    best = next(r for r in summary["table"] if r["trial_id"] == summary["best_trial"])
    assert best["config"]["lr"] == 2e-2
    assert summary["best_val_mean_iou"] == max(r["val_mean_iou"] for r in summary["table"])
    assert summary["registered"]["alias_set"] is True
    assert summary["registered"]["version"] == "1" and summary["registered"]["alias"] == "champion"

    # MLflow: one parent, four child runs with their params and per-epoch metrics
    client = MlflowClient(mlflow_uri)
    parent = client.get_run(summary["run_id"])
    assert parent.data.tags["best_trial"] == summary["best_trial"]
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
    )
    assert len(children) == 4
    by_trial = {c.data.tags["unet_ray.tune.trial_id"]: c for c in children}
    for row in summary["table"]:
        child = by_trial[row["trial_id"]]
        assert float(child.data.params["trial.lr"]) == row["config"]["lr"]
        assert float(child.data.params["lr"]) == row["config"]["lr"]
        history = client.get_metric_history(child.info.run_id, "val_miou")
        assert len(history) >= row["epochs"] >= 1
        stopped = child.data.tags.get("unet_ray.tune.stopped_early") == "true"
        assert stopped is row["stopped_early"]
        assert child.info.status == ("KILLED" if stopped else "FINISHED")
    version = client.get_model_version("unet", "1")
    assert version.run_id == by_trial[summary["best_trial"]].info.run_id
    assert str(client.get_model_version_by_alias("unet", "champion").version) == "1"
    trials_json = Path(
        client.download_artifacts(parent.info.run_id, "trials.json", str(tmp_path))
    ).read_text()
    assert len(json.loads(trials_json)) == 4

    # resources come back: every CPU free, no placement group left CREATED
    free, total, created = resources_back(ray_local)
    assert free == total and not created, (free, total, created)
    assert 0 <= summary["placement_groups_released"] <= summary["trials"], summary
