"""What a segment or evaluate run will use, decided on the driver before any work: the cluster,
the paths it may use there, the predictor actors' device and pool, and `--dry-run` summaries."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jobs.common import resources
from jobs.common.cluster_info import (
    ClusterView,
    choose_gpu,
    cluster_view,
    release_capacity,
    request_capacity,
)
from jobs.common.devices import check_gpu_node
from jobs.common.logs import quiet_ray_logs
from jobs.common.mlflow_store import resolve_tracking_uri, tracking_problem
from jobs.common.path_guard import local_path_problems
from jobs.common.ray_cluster import connect_ray
from jobs.inference.config import EvaluateConfig, InferenceConfig, SegmentConfig

if TYPE_CHECKING:
    from jobs.common.model_source import FetchedModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictorActors:
    """The predictor actors of a run."""

    num_gpus: float
    pool: resources.ActorPool
    reason: str
    """Why this device (the flag, the cluster's GPUs, the autoscaler, CUDA here)."""
    fused: bool = False
    """Decode, predict and write inside each actor (`jobs.inference.pipeline`)."""
    decided: bool = True
    """False in a dry run where only the autoscaler could tell the device (not asked)."""

    @property
    def use_gpu(self) -> bool:
        return self.num_gpus > 0


def guarded_paths(cfg: InferenceConfig) -> dict[str, str | None]:
    """The flags of ``cfg`` that workers read or write, and a local MLflow store."""
    paths: dict[str, str | None] = {}
    if isinstance(cfg, SegmentConfig):
        paths.update({"--input": cfg.input, "--input-list": cfg.input_list, "--output": cfg.output})
    if isinstance(cfg, EvaluateConfig):
        paths.update({"--data": cfg.data, "--class-map": cfg.class_map})
    if cfg.model.startswith("models:/") or cfg.model.startswith("runs:/"):
        with contextlib.suppress(ValueError):
            paths["--tracking-uri / $MLFLOW_TRACKING_URI"] = resolve_tracking_uri(cfg.tracking_uri)
    return paths


def choose_predictor_actors(cfg: InferenceConfig, view: ClusterView) -> PredictorActors:
    """Device and pool bounds of the predictor actors (the flags win)."""
    choice = choose_gpu(view, cfg.use_gpu, what="predictor actors", probe=not cfg.dry_run)
    num_gpus = cfg.gpus_per_worker if choice.use_gpu else 0.0
    fused = cfg.fused if cfg.fused is not None else num_gpus == 0
    min_actors, max_actors = cfg.worker_range  # 0 = auto
    pool = resources.actor_pool(
        min_actors=min_actors,
        max_actors=max_actors,
        torch_threads=cfg.torch_threads,
        num_gpus=num_gpus,
        view=view,
        fused=fused,
        cpus_per_actor=cfg.cpus_per_worker,
    )
    logger.info(
        "predictor pool: %d-%d %s actors, %s",
        pool.min_size,
        pool.max_size,
        "fused" if fused else "staged",
        f"{num_gpus:g} GPU each" if num_gpus else f"{pool.torch_threads} torch thread(s) each",
    )
    return PredictorActors(num_gpus, pool, choice.reason, fused, choice.decided)


@dataclass
class Session:
    """The Ray a batch job runs on, with what it knows about it."""

    cfg: InferenceConfig
    view: ClusterView
    problems: list[str]
    """Local paths the cluster's nodes cannot see (refused unless --dry-run reports them)."""

    def ask_for_first_nodes(self, actors: PredictorActors) -> None:
        """On an autoscaling cluster, ask for the first actor's node and a CPU for decoding:
        Ray Data submits no task while the cluster has no CPU for it, so nothing would ask.
        GPU actors: a cluster that has no GPU node and cannot start one, or whose GPU node has
        no usable CUDA, is refused here (`NoCudaError`), not after --startup-timeout."""
        bundle = {"CPU": self.cfg.cpus_per_worker}
        if actors.num_gpus:
            bundle["GPU"] = actors.num_gpus
        request_capacity(self.view, [bundle, {"CPU": max(1.0, self.cfg.decode_cpus)}])
        if actors.num_gpus:
            check_gpu_node(self.view, what="predictor actors", timeout=self.cfg.startup_timeout)


@contextlib.contextmanager
def batch_session(cfg: InferenceConfig) -> Iterator[Session]:
    """Connect (or start a local Ray), take the cluster's view and check the paths; on exit
    withdraw resource requests and stop a Ray this job started."""
    import ray

    owned = connect_ray(cfg.ray_address, num_cpus=cfg.num_cpus, dashboard=False)
    quiet_ray_logs(cfg.log_level)  # our progress lines replace Ray Data's bars
    view = cluster_view(cfg.ray_address)
    try:
        problems = local_path_problems(view, guarded_paths(cfg), shared_fs=cfg.shared_fs)
        yield Session(cfg, view, problems)
    finally:
        release_capacity(view)
        if owned:
            ray.shutdown()


def _as_flag(pool: resources.ActorPool) -> int | str:
    """A pool's bounds as --num-workers takes them: N, or MIN-MAX."""
    low, high = pool.min_size, pool.max_size
    return low if low == high else f"{low}-{high}"


def _device(actors: PredictorActors | None) -> str | None:
    if actors is None:
        return None
    return ("gpu" if actors.use_gpu else "cpu") if actors.decided else "auto"


def dry_run_summary(
    session: Session, actors: PredictorActors | None, **planned: Any
) -> dict[str, Any]:
    """The common part of the batch jobs' `--dry-run` JSON, plus what each job ``planned``."""
    cfg = session.cfg
    problems = list(session.problems) + list(planned.pop("problems", []))
    tracking = guarded_paths(cfg).get("--tracking-uri / $MLFLOW_TRACKING_URI")
    unreachable = tracking_problem(tracking) if tracking else None
    if unreachable:
        problems.append(unreachable)
    return {
        "dry_run": True,
        "device": _device(actors),
        "device_reason": actors.reason if actors else None,
        "gpus_per_worker": actors.num_gpus if actors else None,
        "num_workers": _as_flag(actors.pool) if actors else None,
        "torch_threads": actors.pool.torch_threads if actors else None,
        "fused": actors.fused if actors else None,
        "cluster": session.view.describe(),
        "tracking_uri": tracking,
        **planned,
        "problems": problems,
    }


def fetched_model_or_problem(
    cfg: InferenceConfig, problems: list[str], *, endpoint_url: str | None = None
) -> FetchedModel | None:
    """The model read as a run reads it (`fetch_model`: pinned, fetched, loaded), for a dry
    run; why not, appended to ``problems``, when it cannot be read."""
    from jobs.common.model_source import ModelSourceError, fetch_model

    try:
        return fetch_model(cfg.model, tracking_uri=cfg.tracking_uri, endpoint_url=endpoint_url)
    except (ModelSourceError, ValueError, OSError) as exc:
        problems.append(f"model: {exc}")
        return None
