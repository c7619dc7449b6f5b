"""How every job ends: one exit-code table and one strict-JSON line on stdout.

| code | meaning                                                                   |
|------|---------------------------------------------------------------------------|
| 0    | done (a `--dry-run` without problems too)                                  |
| 1    | the job ran and failed its own criterion (too many failed images, bad pairs, an export over its tolerance) |
| 2    | refused before any work: usage, bad input, paths, versions, a missing device or dependency |
| 3    | unexpected failure: the traceback is logged at `--log-level DEBUG`         |

The last stdout line is the job's summary, or ``{"error": ..., "kind": ..., "exit_code": ...}``;
every line carries ``exit_code``, and a summary of a failed criterion or of a `--dry-run` with
problems also ``error`` and ``kind``. `--help` prints no JSON. JSON is strict: a NaN or
infinite figure is written as null, never as a bare ``NaN``.

An exception says which refusal it is with a class attribute ``exit_kind`` (e.g. ``"paths"``),
so this module knows no stage's exceptions; ``exit_kind = "criterion"`` means exit 1. Other
``ValueError`` and ``OSError`` subclasses that name a missing or bad input are refusals of kind
``"input"``; anything else is unexpected.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import subprocess
import sys
from collections.abc import Callable
from typing import Any, TextIO

log = logging.getLogger(__name__)

DONE = 0
CRITERION_FAILED = 1
REFUSED = 2
UNEXPECTED = 3

CRITERION = "criterion"
UNEXPECTED_KIND = "unexpected"
USAGE = "usage"
DRY_RUN = "dry_run"
_INPUT_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError)


class JobError(RuntimeError):
    """A job run by another (`run_script`) ended with a non-zero code: its error, of its kind."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.exit_kind = kind


def strict(value: Any) -> Any:
    """`value` with every non-finite float replaced by None (recursively), for strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: strict(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [strict(item) for item in value]
    return value


def say(error: str) -> None:
    """The reason a job ends with a non-zero code, on stderr as ``error: ...`` (as argparse says
    a usage error), whatever the logging set-up."""
    print(f"error: {error}", file=sys.stderr, flush=True)


def print_json(obj: dict[str, Any]) -> None:
    """The job's last stdout line (stderr flushed first, so the line stays last)."""
    sys.stderr.flush()
    print(json.dumps(strict(obj), allow_nan=False, default=str), flush=True)


def kind_of(exc: BaseException) -> str:
    """The refusal kind of `exc`: its ``exit_kind``, or that of the exception it was raised
    from (a Ray task's error wraps the task's), ``"input"`` for a bad value or path, else
    ``"unexpected"``."""
    cause: BaseException | None = exc
    while cause is not None:
        declared = getattr(cause, "exit_kind", None)
        if declared:
            return str(declared)
        cause = cause.__cause__
    if isinstance(exc, _INPUT_ERRORS):
        return "input"
    return UNEXPECTED_KIND


def code_of(kind: str) -> int:
    """The exit code of a kind: 1 for ``"criterion"``, 3 for ``"unexpected"``, else 2."""
    if kind == CRITERION:
        return CRITERION_FAILED
    if kind == UNEXPECTED_KIND:
        return UNEXPECTED
    return REFUSED


def error_exit(exc: BaseException, *, job: str) -> int:
    """Log `exc` (its traceback at DEBUG), print the error line, return the exit code."""
    kind = kind_of(exc)
    code = code_of(kind)
    message = str(exc) or type(exc).__name__
    log.debug("%s: %s", job, kind, exc_info=exc)
    if code == UNEXPECTED:
        message = f"{job} failed: {type(exc).__name__}: {message}"
        say(f"{message} (the traceback with --log-level DEBUG)")
    else:
        say(message)
    print_json({"error": message, "kind": kind, "exit_code": code})
    return code


class _Tee:
    """A stream that writes through to ``stream`` and keeps what was written (argparse's
    error line, for the JSON line of a usage error)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.text = io.StringIO()

    def write(self, text: str) -> int:
        self.text.write(text)
        return self.stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def usage_exit(code: int | str | None, stderr: str = "") -> int:
    """argparse ended the parse: --help (0, nothing more to say) or a usage error (2, its
    message already on ``stderr``) that gets the JSON error line too, naming argparse's reason."""
    code = int(code or 0) if not isinstance(code, str) else REFUSED
    if code:
        reasons = [line for line in stderr.splitlines() if ": error: " in line]
        message = reasons[-1] if reasons else "bad command line (see stderr)"
        print_json({"error": message, "kind": USAGE, "exit_code": code})
    return code


def too_many_failed(summary: dict[str, Any], max_failed_fraction: float) -> bool:
    """The failure criterion of segment and evaluate (exit 1): some inputs failed, and more
    than ``--max-failed-fraction`` of them."""
    return summary["failed"] > 0 and summary["failed_fraction"] > max_failed_fraction


def criterion_failed(summary: dict[str, Any], reason: str) -> tuple[dict[str, Any], int]:
    """A job that ran and failed its own criterion: its summary with the reason, and exit 1."""
    say(reason)
    return {**summary, "error": reason, "kind": CRITERION}, CRITERION_FAILED


def dry_run_result(report: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """A `--dry-run` report and its code: 2 when it lists problems (each also logged, and
    joined into its ``error``), else 0."""
    problems = list(report.get("problems") or [])
    for problem in problems:
        say(problem)
    if not problems:
        return report, DONE
    return {**report, "error": "; ".join(problems), "kind": DRY_RUN}, REFUSED


def run_job(
    job: str, parse: Callable[[], Any], run: Callable[[Any], tuple[dict[str, Any], int]]
) -> int:
    """Parse the config, run the job and end it by the table: ``run`` returns the summary and
    its exit code (0, or 1 when the job's own criterion failed: `criterion_failed`); every
    exception becomes an error line and its code. The code is also the line's ``exit_code``."""
    tee = _Tee(sys.stderr)
    try:
        with contextlib.redirect_stderr(tee):
            cfg = parse()
    except SystemExit as exc:
        return usage_exit(exc.code, tee.text.getvalue())
    try:
        summary, code = run(cfg)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # every exit ends with one JSON line
        return error_exit(exc, job=job)
    print_json({**summary, "exit_code": code})
    return code


def run_script(cmd: list[str]) -> dict[str, Any]:
    """Run a job's command (its stderr streamed, its stdout echoed at the end) and return the
    JSON object of its last stdout line; a job that fails raises `JobError` of the job's kind."""
    print(f"\n$ {' '.join(cmd)}", flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if lines:
        print("\n".join(lines), flush=True)
    last = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    if proc.returncode != 0 or not last:
        error = last.get("error") or "no JSON line on stdout"
        raise JobError(
            f"{cmd[1] if len(cmd) > 1 else cmd[0]} failed with exit code {proc.returncode}: {error}",
            last.get("kind") or UNEXPECTED_KIND,
        )
    return last
