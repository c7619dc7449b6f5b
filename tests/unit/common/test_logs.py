"""A quiet console: Ray's and MLflow's own notices are held back at INFO, shown at DEBUG, and
nothing at ERROR or with another message is ever dropped."""

from __future__ import annotations

import json
import logging
import os
import warnings

import pytest

from jobs.common import logs

PREEMPTION = (
    "[2026-12-01 20:00:49,905 E 8638 8685] core_worker.cc:2465: Actor with class name: "
    "'PreemptionWatcher' and ID: '6475982651b633d6e4c11e3701000000' has constructor arguments "
    "in the object store and max_restarts > 0. If the arguments in the object store go out of "
    "scope or are lost, the actor restart will fail. See "
    "https://github.com/ray-project/ray/issues/53727 for more details."
)
REAL_ERROR = "[2026-12-01 20:00:50,001 E 8638 8685] core_worker.cc:912: Failed to push task"
PROGRESS = (
    "Progress bars disabled. To enable, set "
    "`ray.data.DataContext.get_current().enable_progress_bars = True`."
)
TOKEN = (
    "Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt "
    "out. For more information, see https://docs.ray.io/en/latest/ray-security/token-auth.html"
)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def ray_logger():
    """Ray's logger of a notice, with a handler of its own; its filters restored after."""

    def attach(name: str) -> Records:
        logger = logging.getLogger(name)
        saved.append((logger, list(logger.filters), logger.level))
        logger.setLevel(logging.DEBUG)
        records = Records()
        logger.addHandler(records)
        handlers.append((logger, records))
        return records

    saved: list = []
    handlers: list = []
    yield attach
    for logger, records in handlers:
        logger.removeHandler(records)
    for logger, filters, level in saved:
        logger.filters[:] = filters
        logger.setLevel(level)


@pytest.mark.parametrize(
    ("name", "notice"),
    [
        ("ray.data._internal.progress", PROGRESS),
        ("ray._private.authentication.authentication_token_setup", TOKEN),
    ],
)
def test_a_notice_is_dropped_at_info_and_kept_at_debug(ray_logger, name, notice):
    records = ray_logger(name)
    logs.install_notice_filters("INFO")
    logging.getLogger(name).warning(notice)
    logging.getLogger(name).warning("Progress bars for operators disabled: another message")
    logging.getLogger(name).error(notice)  # the same words at ERROR: never held back
    assert records.messages == ["Progress bars for operators disabled: another message", notice]

    records.messages.clear()
    logs.install_notice_filters("DEBUG")  # replaces the INFO filter
    logging.getLogger(name).warning(notice)
    assert records.messages == [notice]


def test_the_warning_that_auth_is_disabled_stays(ray_logger):
    name = "ray._private.authentication.authentication_token_setup"
    records = ray_logger(name)
    logs.install_notice_filters("info")  # levels are case-blind, as the flags are
    disabled = "Token authentication is disabled for this Ray cluster. Anyone with network..."
    logging.getLogger(name).warning(disabled)
    assert records.messages == [disabled]


@pytest.fixture
def deduplicators():
    from ray._private import ray_logging

    dedups = (ray_logging.stdout_deduplicator, ray_logging.stderr_deduplicator)
    saved = [d.skip_re for d in dedups]
    for dedup in dedups:  # lines an earlier Ray of this process left buffered come out first
        dedup.flush()
    yield ray_logging.stderr_deduplicator
    for dedup, skip in zip(dedups, saved, strict=True):
        dedup.skip_re = skip


def forwarded(dedup, *lines: str) -> list[str]:
    """What the driver prints of lines a worker sent (Ray's real deduplicator)."""
    batch = {"ip": "127.0.0.1", "pid": 4242, "actor_name": "TrainController", "lines": lines}
    return [line for out in dedup.deduplicate(batch) for line in out["lines"]]


def test_a_forwarded_notice_is_dropped_at_info_and_kept_at_debug(deduplicators):
    logs.drop_forwarded_notices("INFO")
    assert forwarded(deduplicators, PREEMPTION, REAL_ERROR) == [REAL_ERROR]
    logs.drop_forwarded_notices("DEBUG")
    assert forwarded(deduplicators, PREEMPTION, REAL_ERROR) == [PREEMPTION, REAL_ERROR]


def test_a_skip_pattern_of_the_user_is_kept(deduplicators, monkeypatch):
    from ray._private import ray_constants

    monkeypatch.setattr(ray_constants, "RAY_DEDUP_LOGS_SKIP_REGEX", "^my noise")
    logs.drop_forwarded_notices("INFO")
    assert forwarded(deduplicators, "my noise 1", PREEMPTION, REAL_ERROR) == [REAL_ERROR]
    logs.drop_forwarded_notices("DEBUG")
    assert forwarded(deduplicators, "my noise 2", PREEMPTION) == [PREEMPTION]


@pytest.fixture
def console(monkeypatch):
    """setup_logging's process-wide state, restored after the test."""
    monkeypatch.setattr(logs, "_console_level", None)
    monkeypatch.delenv("MLFLOW_LOGGING_LEVEL", raising=False)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    saved = {name: list(logging.getLogger(name).filters) for name, _ in logs.RAY_NOTICES}
    mlflow_level = logging.getLogger("mlflow").level
    yield monkeypatch
    for name, filters in saved.items():
        logging.getLogger(name).filters[:] = filters
    logging.getLogger("mlflow").setLevel(mlflow_level)


def test_ray_init_options_follow_the_level(console):
    assert logs.ray_init_options() == {}  # logging not set up by a job: Ray as it is
    logs.setup_logging("INFO")
    assert logs.ray_init_options() == {
        "logging_level": logging.WARNING,
        "runtime_env": {"worker_process_setup_hook": "jobs.common.logs.quiet_ray_worker"},
    }
    assert os.environ["MLFLOW_LOGGING_LEVEL"] == "WARNING"
    logs.setup_logging("DEBUG")
    assert logs.ray_init_options() == {}


def test_a_setup_hook_of_the_submitted_job_is_left_alone(console):
    logs.setup_logging("INFO")
    job = {"runtime_env": {"worker_process_setup_hook": "their.hook", "env_vars": {"A": "1"}}}
    console.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(job))
    assert logs.ray_init_options() == {"logging_level": logging.WARNING}  # Ray refuses two


def test_a_users_mlflow_level_wins(console):
    console.setenv("MLFLOW_LOGGING_LEVEL", "INFO")
    logs.setup_logging("INFO")
    assert os.environ["MLFLOW_LOGGING_LEVEL"] == "INFO"


def test_the_worker_hook_quiets_ray_data(ray_logger):
    records = ray_logger("ray.data._internal.progress")
    data = logging.getLogger("ray.data")
    level = data.level
    try:
        logs.quiet_ray_worker()
        assert data.level == logging.WARNING
        logging.getLogger("ray.data._internal.progress").warning(PROGRESS)
        assert records.messages == []
    finally:
        data.setLevel(level)


def test_training_ingest_options_do_not_warn_of_exclude_resources():
    from ray.train import DataConfig

    from jobs.training.datasets import ExactValidationDataConfig

    def deprecations(make):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            options = make()
        return options, [str(w.message) for w in caught if "exclude_resources" in str(w.message)]

    theirs, warned = deprecations(DataConfig.default_ingest_options)
    assert warned  # Ray 2.60's own default warns: the case this guards against
    ours, warned = deprecations(ExactValidationDataConfig.default_ingest_options)
    assert warned == []
    assert ours == theirs  # the same options otherwise
