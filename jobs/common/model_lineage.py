"""The links between a registered model version and the job runs that used it (evaluate,
segment), in one place: the run tags that name the version, the tags a job sets on the version,
and the query that finds, from a version, every run that used it.

Both directions are plain MLflow tags, so that any store (sqlite, a server) and any client can
follow them: a run's ``model_name`` / ``model_version`` tags name its version, and
`runs_using` searches every experiment for them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)

JOB_TAG = "job"
"""Run tag naming the job that made the run: ``evaluate`` or ``segment``."""


def model_tags(model: Mapping[str, Any]) -> dict[str, str]:
    """Run tags that name the model a run used, from a summary's (or
    `ResolvedModel.to_dict`'s) ``model_uri``, ``model_name`` and ``model_version``; the last
    two are empty for a model that is not a registered version."""
    return {
        "model_uri": str(model.get("model_uri") or ""),
        "model_name": str(model.get("model_name") or ""),
        "model_version": str(model.get("model_version") or ""),
    }


def tag_model_version(client, name: str, version: str, tags: Mapping[str, Any]) -> None:
    """Set ``tags`` (values as strings) on registered model ``name`` version ``version``."""
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))


def runs_using(client, name: str, version: str, *, job: str | None = None) -> list:
    """Every run, in any experiment, whose tags say it used version ``version`` of registered
    model ``name`` (only ``job``'s runs when given), newest first."""
    from mlflow.entities import ViewType

    experiments, token = [], None
    while True:
        page = client.search_experiments(view_type=ViewType.ALL, page_token=token)
        experiments += [e.experiment_id for e in page]
        token = page.token
        if not token:
            break
    query = f"tags.model_name = '{name}' and tags.model_version = '{version}'"
    if job:
        query += f" and tags.{JOB_TAG} = '{job}'"
    runs, token = [], None
    while experiments:
        page = client.search_runs(
            experiments, query, ViewType.ALL, order_by=["start_time DESC"], page_token=token
        )
        runs += list(page)
        token = page.token
        if not token:
            break
    return runs
