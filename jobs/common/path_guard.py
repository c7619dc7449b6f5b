"""Refuse driver-local paths on a cluster whose workers cannot see them.

On a cluster with more than one node, or an autoscaler that can add nodes, a local path is the
driver's alone: workers elsewhere would read nothing, write where nobody looks, or open a
different sqlite database. Every such flag is refused before any work, naming the flag and the
fix. ``--shared-fs`` declares that local paths are on a mount every node sees at the same path
(NFS, EFS, FSx); a single-node local Ray is never refused.

A file that only the driver reads (a class map, a recipe) is the exception: given by a path
inside the job's working directory, it travels with the code that ``ray job submit
--working-dir`` uploads, so it is there on whatever node runs the driver.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from jobs.common.cluster_info import ClusterView

LOCAL_URI_SCHEMES = ("file:", "sqlite:")
DRIVER_READ_FLAGS = frozenset({"--class-map", "--config"})
"""Flags whose file only the driver reads (and hands to workers as values, never as paths):
accepted on a cluster when the path lies inside the job's working directory."""


class LocalPathError(ValueError):
    """A local path on a multi-node cluster; the message names every flag and the fix."""

    exit_kind = "paths"  # a job ends with exit code 2 (jobs.common.exits)


def is_local(value: str) -> bool:
    """A path or URI that lives on one machine's disk: plain paths, file://, sqlite:///."""
    text = str(value)
    return "://" not in text or text.startswith(LOCAL_URI_SCHEMES)


def inside_working_dir(value: str, working_dir: Path | None = None) -> bool:
    """Whether the local path ``value`` (relative to ``working_dir``, default the current
    directory: the unpacked working dir under `ray job submit`) lies inside that directory."""
    base = (working_dir or Path.cwd()).resolve()
    path = Path(str(value).removeprefix("file://")).expanduser()
    return (base / path).resolve().is_relative_to(base)


def _driver_read(flag: str) -> bool:
    return flag.split(" ", 1)[0] in DRIVER_READ_FLAGS


def local_path_problems(
    view: ClusterView, paths: Mapping[str, str | None], *, shared_fs: bool
) -> list[str]:
    """One message per flag in ``paths`` ({"--data": value}) whose value is local while the
    cluster is multi-node; [] on a local Ray, with --shared-fs, or when all are remote. A
    driver-read file (`DRIVER_READ_FLAGS`) inside the working directory is not a problem."""
    if shared_fs or not view.multi_node:
        return []
    where = (
        f"{view.nodes} nodes" + (" and an autoscaler" if view.autoscaler else "")
        if view.nodes > 1
        else "an autoscaler that adds nodes"
    )
    problems = []
    for flag, value in paths.items():
        if value is None or not is_local(value):
            continue
        if _driver_read(flag) and not value.startswith("sqlite:"):
            if inside_working_dir(value):
                continue
            problems.append(
                f"{flag} {value} is outside the job's working directory {Path.cwd()}, so it "
                "does not travel with the job: only the driver reads it, so put it inside the "
                "directory you submit (ray job submit --working-dir) and give its relative "
                "path (e.g. configs/camvid.classes.json), or use s3://bucket/prefix"
            )
            continue
        if value.startswith("sqlite:") or flag == "--tracking-uri":
            fix = (
                "point it at an MLflow server every node reaches (http://...; see "
                "cluster/mlflow_server.md)"
            )
        else:
            fix = "use s3://bucket/prefix"
        problems.append(
            f"{flag} {value} is a local path but the cluster has {where}: {fix}, or pass "
            "--shared-fs if it is on a filesystem every node mounts at the same path"
        )
    return problems


def refuse_local_paths(
    view: ClusterView, paths: Mapping[str, str | None], *, shared_fs: bool
) -> None:
    """Raise `LocalPathError` listing every refused flag (see `local_path_problems`)."""
    problems = local_path_problems(view, paths, shared_fs=shared_fs)
    if problems:
        raise LocalPathError("; ".join(problems))
