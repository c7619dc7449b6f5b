"""Helpers for tests that start real servers (Ray heads, MLflow, fake clusters) on loopback:
a clean child environment, free ports, readiness polling, and stopping exactly what was
started (by process group and by a marker path, never by name)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

LOOPBACK = "127.0.0.1"
VENV_BIN = Path(sys.executable).parent
NO_PROXY = f"{LOOPBACK},localhost"

# Environment that keeps every child process on this machine: no usage stats or telemetry,
# no EC2 metadata lookups, no proxies for loopback, and a single-node Ray that binds to
# loopback (`ray start --node-ip-address=127.0.0.1` alone resolves to the host's interface).
QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "AWS_EC2_METADATA_DISABLED": "true",
    "NO_PROXY": NO_PROXY,
    "no_proxy": NO_PROXY,
    "PYTHONUNBUFFERED": "1",
}


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment without Ray/MLflow/AWS settings, plus QUIET_ENV and `extra`.

    PATH starts with the project's venv, so `ray`, `mlflow` and the job's `python` are its own.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RAY_", "MLFLOW_", "AWS_"))
        and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")
    }
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(QUIET_ENV)
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"<no log at {path}>"


def wait_until(
    ready: Callable[[], bool], *, timeout: float, what: str, proc: subprocess.Popen, log: Path
) -> float:
    """Poll `ready` until it is true; fail with the log's tail on timeout or if `proc` exits."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; log {log}:\n{tail(log)}")
        try:
            if ready():
                return time.monotonic() - start
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{what} not ready after {timeout:.0f} s; log {log}:\n{tail(log)}")


def _pids_marked(marker: str) -> list[int]:
    """Processes of this user whose command line, environment or working directory contains
    `marker` (a path unique to this session): the ones this session started, found by id.
    (Ray's agents rename themselves and drop HOME, but keep the working directory.)"""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            blob = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
            blob += os.readlink(entry / "cwd").encode()
        except OSError:
            continue
        if marker.encode() in blob:
            found.append(int(entry.name))
    return found


def stop_process_tree(proc: subprocess.Popen, *, marker: str, grace: float = 5.0) -> None:
    """Stop a server and everything it started: SIGTERM the leader (`ray start --block` then
    stops its children), after `grace` seconds SIGTERM its process group and the processes
    carrying `marker` (Ray workers run in process groups of their own and rename themselves,
    but keep the environment), then SIGKILL whatever is left of both."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    for sig, pause in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 0.0)):
        if proc.poll() is not None and not _group_alive(proc.pid) and not _pids_marked(marker):
            break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        for pid in _pids_marked(marker):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=pause or 10)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


@dataclass
class JobRun:
    """One `ray job submit` as run by the CLI."""

    command: list[str]
    returncode: int
    output: str
    seconds: float

    @property
    def final_json(self) -> dict:
        """The job's result: the last line of its output that is a JSON object."""
        for line in reversed(self.output.splitlines()):
            line = line.strip()
            if line.startswith("{") and line.endswith("}"):
                try:
                    value = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(value, dict):
                    return value
        raise AssertionError(f"no JSON result line in the job output:\n{self.output[-4000:]}")

    @classmethod
    def run(cls, cmd: list[str], *, cwd: Path, env: dict[str, str], timeout: float) -> JobRun:
        """Run ``cmd`` to the end (stdout and stderr together); a timeout is exit -1."""
        start = time.monotonic()
        try:
            proc = subprocess.run(
                cmd,
                cwd=cwd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=timeout,
            )
            code, output = proc.returncode, proc.stdout
        except subprocess.TimeoutExpired as exc:
            partial = (
                exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout
            )
            code, output = -1, f"{partial or ''}\n<timed out after {timeout:.0f} s>"
        return cls(cmd, code, output, time.monotonic() - start)

    def describe(self, lines: int = 80) -> str:
        body = "\n".join(self.output.splitlines()[-lines:])
        return (
            f"$ {' '.join(self.command)}\nexit {self.returncode} after {self.seconds:.0f} s\n{body}"
        )


@contextlib.contextmanager
def serving(
    cmd: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    log: Path,
    ready: Callable[[], bool],
    what: str,
    timeout: float,
    marker: str,
) -> Iterator[subprocess.Popen]:
    """Start a server in its own process group (output to ``log``), wait until ``ready``,
    yield it, and stop it and everything it started (`stop_process_tree` by ``marker``)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_until(ready, timeout=timeout, what=what, proc=proc, log=log)
        yield proc
    finally:
        stop_process_tree(proc, marker=marker)
