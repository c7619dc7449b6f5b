"""How a search closes its trials' MLflow child runs (`jobs.tuning.results.close_child_runs`),
on a real MLflow store."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from jobs.tuning.results import STOPPED_EARLY_TAG, TrialRow, close_child_runs


def _row(trial_id: str, run_id: str, *, stopped: bool, status="TERMINATED", error=None):
    return TrialRow(trial_id, {}, status, 1, stopped, 0.5, 1, 0.5, None, run_id, error)


def test_stopped_trials_end_killed_even_when_their_fit_closed_them_as_failed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("search", artifact_location=str(tmp_path / "a"))
    runs = {name: client.create_run(experiment).info.run_id for name in "abcd"}
    client.set_terminated(runs["a"], "FAILED")  # the stop interrupted its fit
    client.set_terminated(runs["d"], "FAILED")  # a real failure, not stopped
    rows = [
        _row("a", runs["a"], stopped=True),
        _row("b", runs["b"], stopped=True),  # still RUNNING
        _row("c", runs["c"], stopped=False),  # ran to its end
        _row("d", runs["d"], stopped=False, status="ERROR", error="boom"),
    ]
    children = {run_id: client.get_run(run_id) for run_id in runs.values()}
    close_child_runs(rows, children, uri)
    status = {name: client.get_run(run_id).info.status for name, run_id in runs.items()}
    assert status == {"a": "KILLED", "b": "KILLED", "c": "FINISHED", "d": "FAILED"}
    assert client.get_run(runs["a"]).data.tags[STOPPED_EARLY_TAG] == "true"
