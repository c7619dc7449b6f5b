"""What the Ray cluster is and can become: nodes now, the autoscaler, GPUs it can launch.

Every device and pool decision of the jobs reads a `ClusterView`, taken once on the driver:

- A local Ray this job started (no --ray-address, no $RAY_ADDRESS): one machine; GPU when this
  machine has CUDA.
- A cluster: GPUs are used when it has GPU nodes now, when the cluster config Ray reports
  (`ray._private.state`, what Ray Train and Ray Data read for their own limits; private Ray
  APIs are reached through `jobs.common.private_apis`) has node types with GPUs, or, when
  only the autoscaler's status is published (autoscaler v1 writes `__autoscaling_status` to
  the GCS; v2 answers `get_cluster_status`), when the autoscaler starts launching a node after being asked for one GPU
  (`ray.autoscaler.sdk.request_resources`). Neither autoscaler publishes its node types
  before a launch, so asking is the only way to learn it; the request is withdrawn after the
  probe (the trainer's placement group or the actors then ask for what they need).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass

import ray

from jobs.common import private_apis
from jobs.common.ray_cluster import cluster_address

log = logging.getLogger(__name__)

AUTOSCALER_STATUS_KEY = "__autoscaling_status"
"""GCS key where Ray's autoscaler v1 publishes its status (`ray status` reads it)."""
GPU_PROBE_SECONDS = 20.0
"""How long the GPU probe waits for the autoscaler to start launching a GPU node (v1 updates
every 5 s by default)."""
NODE_START_TIMEOUT_S = 600.0
"""How long a job waits for the autoscaler to bring up the CPUs a stage needs before failing."""
UNBOUNDED_POOL = 16
"""Most predictor actors when the cluster's maximum size is not published."""


@dataclass(frozen=True)
class ClusterView:
    """The cluster as the driver sees it when the job starts."""

    local: bool
    """A local Ray started by this job (or in this process) on this machine."""
    nodes: int
    """Alive nodes now."""
    resources: dict[str, float]
    """Total resources now (`ray.cluster_resources()`)."""
    autoscaler: str | None = None
    """"v1", "v2" or None (no autoscaler publishes its status: the cluster is fixed)."""
    max_resources: dict[str, float] | None = None
    """Most resources the cluster can grow to, when Ray reports its cluster config."""
    local_cores: int | None = None
    """This machine's cores on a local Ray; None on a cluster, whose nodes may differ."""

    @property
    def multi_node(self) -> bool:
        """More than one node now, or an autoscaler that can add some: local paths of the
        driver are not the workers' paths."""
        return not self.local and (self.nodes > 1 or self.autoscaler is not None)

    @property
    def gpus_now(self) -> float:
        return self.resources.get("GPU", 0.0)

    def most(self, resource: str) -> float | None:
        """Most of ``resource`` the cluster can have: now, or the reported maximum; None when
        an autoscaler may add more and does not say how much."""
        now = self.resources.get(resource, 0.0)
        if self.max_resources is not None:
            return max(now, float(self.max_resources.get(resource, 0)))
        return None if self.autoscaler else now

    def describe(self) -> dict:
        return {
            "local": self.local,
            "nodes": self.nodes,
            "autoscaler": self.autoscaler,
            "resources_now": {k: v for k, v in self.resources.items() if k in ("CPU", "GPU")},
            "max_resources": (
                {k: v for k, v in self.max_resources.items() if k in ("CPU", "GPU")}
                if self.max_resources is not None
                else None
            ),
        }


def _autoscaler_status() -> dict | None:
    raw = private_apis.gcs_kv_get(AUTOSCALER_STATUS_KEY)
    return json.loads(raw) if raw else None


def runs_an_autoscaler(status: dict | None) -> bool:
    """Whether a v1 monitor status (`__autoscaling_status`) comes from an autoscaler that can
    add nodes. Every `ray start --head` runs one; without an autoscaling config it mirrors the
    nodes that joined by hand with Ray's read-only provider, whose node types are named after
    the nodes (`format_readonly_node_type`): then the cluster is fixed."""
    report = (status or {}).get("autoscaler_report") or {}
    mapping = report.get("node_type_mapping") or {}
    if not mapping:
        return False
    return any(kind != private_apis.readonly_node_type(node) for node, kind in mapping.items())


def _autoscaler_version() -> str | None:
    try:
        if runs_an_autoscaler(_autoscaler_status()):
            return "v1"
    except Exception:  # noqa: BLE001 - an old or odd GCS: treat as no v1 autoscaler
        log.debug("no autoscaler v1 status", exc_info=True)
    try:
        from ray.autoscaler.v2.utils import is_autoscaler_v2

        if is_autoscaler_v2(fetch_from_server=True):
            return "v2"
    except Exception:  # noqa: BLE001
        log.debug("no autoscaler v2", exc_info=True)
    return None


def _max_resources() -> dict[str, float] | None:
    try:
        return private_apis.max_resources_from_cluster_config()
    except Exception:  # noqa: BLE001 - private API: absent means "not reported"
        log.debug("no cluster config in the GCS", exc_info=True)
        return None


def cluster_view(address: str | None = None) -> ClusterView:
    """Take the view of the Ray this process is connected to (`connect_ray` first)."""
    alive = [n for n in ray.nodes() if n.get("Alive")]
    local = cluster_address(address) is None
    return ClusterView(
        local=local,
        nodes=len(alive),
        resources=dict(ray.cluster_resources()),
        autoscaler=None if local else _autoscaler_version(),
        max_resources=None if local else _max_resources(),
        local_cores=(os.cpu_count() or 1) if local else None,
    )


# --- GPUs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuChoice:
    use_gpu: bool
    reason: str
    decided: bool = True
    """False when only asking the autoscaler would tell (a dry run does not ask)."""


def _launching(view_version: str | None) -> int:
    """Nodes the autoscaler is launching or booting now."""
    if view_version == "v2":
        from ray.autoscaler.v2.sdk import get_cluster_status

        status = get_cluster_status(ray.get_runtime_context().gcs_address)
        return sum(r.count for r in status.pending_launches) + len(status.pending_nodes)
    report = (_autoscaler_status() or {}).get("autoscaler_report") or {}
    return sum((report.get("pending_launches") or {}).values()) + len(
        report.get("pending_nodes") or []
    )


def probe_autoscaler_gpu(view: ClusterView, *, timeout: float = GPU_PROBE_SECONDS) -> bool:
    """Ask the autoscaler for one GPU; True when it starts a node for it (or a GPU appears)
    within ``timeout`` seconds. The request is withdrawn either way."""
    from ray.autoscaler.sdk import request_resources

    before = _launching(view.autoscaler)
    request_resources(bundles=[{"GPU": 1}])
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            time.sleep(0.5)
            if ray.cluster_resources().get("GPU", 0) > 0 or _launching(view.autoscaler) > before:
                return True
        return False
    finally:
        request_resources(bundles=[])


def choose_gpu(
    view: ClusterView, requested: bool | None, *, what: str, probe: bool = True
) -> GpuChoice:
    """GPU or CPU for ``what`` ("training workers", "predictor actors"): the flag when given,
    else the rule of this module's docstring. Logs the choice and its reason in one line.
    ``probe`` False (a dry run): where only a GPU node started by the autoscaler would tell,
    nothing is asked and the choice is left undecided (no node is started for a dry run)."""
    if requested is not None:
        choice = GpuChoice(requested, "as requested")
    elif view.local:
        import torch

        cuda = torch.cuda.is_available()
        choice = GpuChoice(
            cuda, "this machine has CUDA" if cuda else "this machine has no CUDA device"
        )
    elif view.gpus_now > 0:
        choice = GpuChoice(True, f"the cluster has {view.gpus_now:g} GPUs now")
    elif view.max_resources is not None:
        most = float(view.max_resources.get("GPU", 0))
        choice = GpuChoice(
            most > 0,
            f"the cluster config allows up to {most:g} GPUs"
            if most > 0
            else "no node type of the cluster config has GPUs",
        )
    elif view.autoscaler and not probe:
        return GpuChoice(
            False,
            "decided when the job runs: the autoscaler is then asked for a GPU node (a dry run "
            "starts none; pass --device gpu or cpu to decide now)",
            decided=False,
        )
    elif view.autoscaler:
        found = probe_autoscaler_gpu(view)
        choice = GpuChoice(
            found,
            "the autoscaler started a GPU node when asked"
            if found
            else f"the autoscaler launched no GPU node within {GPU_PROBE_SECONDS:g} s of asking",
        )
    else:
        choice = GpuChoice(False, "the cluster has no GPUs and no autoscaler")
    if choice.use_gpu:
        log.info("%s on GPU: %s", what, choice.reason)
    else:
        log.info("%s on CPU: %s (pass --device gpu to insist)", what, choice.reason)
    return choice


# --- asking for what a stage needs ---------------------------------------------------------


def request_capacity(view: ClusterView, bundles: list[dict[str, float]]) -> None:
    """Ask the autoscaler to keep ``bundles`` available while the job runs (Ray Data does not
    submit tasks while the cluster has no CPU for them, so nothing would ever ask for it).
    A no-op without an autoscaler; `release_capacity` withdraws it."""
    if not view.autoscaler or not bundles:
        return
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=bundles)
    log.info("asked the autoscaler for %s", _bundles_text(bundles))


def release_capacity(view: ClusterView) -> None:
    if not view.autoscaler:
        return
    from ray.autoscaler.sdk import request_resources

    try:
        request_resources(bundles=[])
    except Exception:  # noqa: BLE001 - the cluster may be gone at the end of a job
        log.debug("could not withdraw the resource request", exc_info=True)


def wait_for_cpus(view: ClusterView, cpus: float, *, timeout: float) -> None:
    """Block until the cluster has ``cpus`` CPUs (asking the autoscaler for them); fail fast
    with what is missing when it cannot have them or they do not come up in ``timeout`` s."""
    have = ray.cluster_resources().get("CPU", 0.0)
    if have >= cpus:
        return
    if not view.autoscaler:
        raise RuntimeError(
            f"the job needs {cpus:g} CPUs for its data stage but the cluster has {have:g} and "
            "no autoscaler: add worker nodes with CPUs (the head may offer none for work)"
        )
    request_capacity(view, [{"CPU": 1.0}] * max(1, int(cpus)))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ray.cluster_resources().get("CPU", 0.0) >= cpus:
            return
        time.sleep(1.0)
    raise RuntimeError(
        f"asked the autoscaler for {cpus:g} CPUs; the cluster still has "
        f"{ray.cluster_resources().get('CPU', 0.0):g} after {timeout:.0f} s: check `ray status` "
        "for failed launches or the node types' max_workers"
    )


def _bundles_text(bundles: list[dict[str, float]]) -> str:
    counts: dict[str, int] = {}
    for bundle in bundles:
        key = json.dumps(bundle, sort_keys=True)
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{n} x {key}" for key, n in counts.items())
