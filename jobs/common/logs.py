"""Logging set-up of the jobs: the driver's format, Ray's and MLflow's own chatter, the workers'
levels.

At INFO (the default) a job's stderr holds its own progress and results; what Ray and MLflow
say about themselves (a local Ray started, progress bars off, a dataset finished, the
database tables created) is shown with --log-level DEBUG only. Nothing at ERROR is held back,
and a failed job still prints its error. What Ray keeps printing at INFO, and why, is in
`tests/e2e/test_demo.py`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys

OUR_LOGGERS = ("jobs", "unet_core")
"""Our loggers' roots: every module logs as its import name (`logging.getLogger(__name__)`; an
entry script names itself, ``jobs.segment``, as ``__name__`` is ``__main__`` when it runs)."""

RAY_NOTICES = (
    # ray.init() on a fresh machine: token authentication is the default, nothing to act on
    # (the warning that it is *disabled* stays).
    (
        "ray._private.authentication.authentication_token_setup",
        r"^Token authentication is enabled for this Ray cluster\.",
    ),
    # Our own choice (`quiet_ray_logs`): the jobs print progress lines instead.
    ("ray.data._internal.progress", r"^Progress bars disabled\. "),
)
"""(logger, message) of Ray's notices shown at DEBUG only, in the driver and the workers."""

FORWARDED_NOTICES = (
    # Ray's C++ core worker, for every actor created with ray.put arguments and restarts on
    # (Ray Train's PreemptionWatcher; Ray Data's pool actors get their DataContext that way):
    # an advice about ray-project/ray#53727, not a failure.
    r"core_worker\.cc:\d+: Actor with class name: '[^']+' and ID: '[0-9a-f]+' has constructor "
    r"arguments in the object store and max_restarts > 0\.",
)
"""Lines that Ray forwards from its worker processes to the driver, dropped there at INFO."""

WORKER_SETUP_HOOK = "jobs.common.logs.quiet_ray_worker"

_console_level: str | None = None
"""The level `setup_logging` gave this process (None: not set up by a job)."""


def is_quiet(level: str | None) -> bool:
    """Ray's and MLflow's notices held back: any level above DEBUG."""
    return level is not None and logging.getLevelName(level.upper()) != logging.DEBUG


class NoticeFilter(logging.Filter):
    """Drops a record below ERROR whose message matches `pattern` unless `level` is DEBUG."""

    def __init__(self, pattern: str, level: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)
        self.quiet = is_quiet(level)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.quiet or record.levelno >= logging.ERROR:
            return True
        return not self.pattern.search(record.getMessage())


def install_notice_filters(level: str) -> None:
    """One `NoticeFilter` per entry of `RAY_NOTICES` on its logger (replacing any earlier one:
    in-process callers set up logging more than once)."""
    for name, pattern in RAY_NOTICES:
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, NoticeFilter)]:
            logger.removeFilter(old)
        logger.addFilter(NoticeFilter(pattern, level))


def setup_logging(level: str) -> None:
    """Timestamped lines on stderr (stdout is kept for the job's JSON result). Above DEBUG,
    Ray's notices and MLflow's INFO lines are held back (`install_notice_filters`; MLflow reads
    MLFLOW_LOGGING_LEVEL on import, a user's own setting wins)."""
    global _console_level
    _console_level = level.upper()
    logging.basicConfig(
        level=getattr(logging, _console_level, logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    install_notice_filters(_console_level)
    if is_quiet(_console_level):
        mlflow_level = os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        if "mlflow" in sys.modules:  # imported already: its level is set
            logging.getLogger("mlflow").setLevel(mlflow_level.upper())


def ray_init_options() -> dict:
    """Extra `ray.init` arguments for the level `setup_logging` set: above DEBUG the driver's
    "ray" logger at WARNING and `quiet_ray_worker` in every worker of the job, unless the job
    (`ray job submit --runtime-env`) brings a setup hook of its own: Ray refuses two."""
    if not is_quiet(_console_level):
        return {}
    from jobs.common import private_apis

    hook_var = private_apis.worker_setup_hook_env_var()
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    job_env = job.get("runtime_env") or {}
    theirs = (
        "worker_process_setup_hook" in job_env
        or hook_var in (job_env.get("env_vars") or {})
        or hook_var in os.environ
    )
    options: dict = {"logging_level": logging.WARNING}
    if not theirs:
        options["runtime_env"] = {"worker_process_setup_hook": WORKER_SETUP_HOOK}
    return options


def quiet_ray_worker() -> None:
    """`worker_process_setup_hook` of the jobs above DEBUG: in Ray's own actors (the split
    coordinators of Ray Train, the pool actors of Ray Data), Ray Data logs warnings and errors
    only, and its notices not at all. Never raises: a failing hook would stop the worker."""
    try:
        import ray.data  # noqa: F401  (configures its loggers on import: set levels after)

        logging.getLogger("ray.data").setLevel(logging.WARNING)
        install_notice_filters("INFO")
    except Exception:  # pragma: no cover - a broken logging set-up must not stop the job
        logging.getLogger(__name__).warning("quieting Ray's logs failed", exc_info=True)


def drop_forwarded_notices(level: str) -> None:
    """Above DEBUG, lines of `FORWARDED_NOTICES` that workers send to the driver are dropped
    there (Ray's log deduplicator, the one place all forwarded lines pass; its skip pattern is
    RAY_DEDUP_LOGS_SKIP_REGEX, read at `import ray`, combined here with any the user set). With
    RAY_DEDUP_LOGS=0 Ray bypasses the deduplicator and every line shows."""
    from jobs.common import private_apis

    own = [] if not is_quiet(level) else list(FORWARDED_NOTICES)
    user = private_apis.dedup_skip_regex()
    pattern = "|".join(f"(?:{p})" for p in ([user] if user else []) + own)
    for dedup in private_apis.log_deduplicators():
        dedup.skip_re = re.compile(pattern) if pattern else None


def quiet_ray_logs(level: str) -> None:
    """Ray Data progress bars and per-report Ray Train logs only at DEBUG: the jobs print their
    own progress lines (one per epoch from rank 0, one every few seconds from batch jobs)."""
    import ray.data

    install_notice_filters(level)
    drop_forwarded_notices(level)
    if is_quiet(level):
        context = ray.data.DataContext.get_current()  # carried to the split coordinators too
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)


def quiet_worker_logs(level: str) -> None:
    """Our loggers at `level`; everything else at WARNING unless DEBUG. Ray Train configures
    the worker's root logger at INFO, and some of its per-report messages bypass its own
    LoggingConfig filter (their logger is named after a file path)."""
    logging.getLogger().setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
    for name in OUR_LOGGERS:
        logging.getLogger(name).setLevel(level)
