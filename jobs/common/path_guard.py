"""Refuse driver-local paths on a cluster whose workers cannot see them.

On a cluster with more than one node, or an autoscaler that can add nodes, a local path is the
driver's alone: workers elsewhere would read nothing, write where nobody looks, or open a
different sqlite database. Every such flag is refused before any work, naming the flag and the
fix. ``--shared-fs`` declares that local paths are on a mount every node sees at the same path
(NFS, EFS, FSx); a single-node local Ray is never refused.
"""

from __future__ import annotations

from collections.abc import Mapping

from jobs.common.cluster_info import ClusterView

LOCAL_URI_SCHEMES = ("file:", "sqlite:")


class LocalPathError(ValueError):
    """A local path on a multi-node cluster; the message names every flag and the fix."""


def is_local(value: str) -> bool:
    """A path or URI that lives on one machine's disk: plain paths, file://, sqlite:///."""
    text = str(value)
    return "://" not in text or text.startswith(LOCAL_URI_SCHEMES)


def local_path_problems(
    view: ClusterView, paths: Mapping[str, str | None], *, shared_fs: bool
) -> list[str]:
    """One message per flag in ``paths`` ({"--data": value}) whose value is local while the
    cluster is multi-node; [] on a local Ray, with --shared-fs, or when all are remote."""
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
