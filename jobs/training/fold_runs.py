"""`train --folds K`: K Ray Train runs of one recipe on K group-aware folds, their out-of-fold
score, and (with --register-as) their ensemble registered as one model version.

The whole set is paired and checked once, its preprocessing and class weights fitted once on
all of it (`gather_whole`, then `jobs.training.job.run_training`'s own steps), so every member
shares them. The folds are `jobs.training.folds.fold_pairs`; run i trains on the other K-1 and
picks its best checkpoint on fold i (by val_miou, as a single run does). Each run is a child
MLflow run (tag ``mlflow.parentRunId``) of the parent run named --run-name, started by
`jobs.training.job.start_run`; they run at once when the cluster holds more than one run's
workers (`concurrent_runs`), else one after another. The out-of-fold score: each member
scored on its own fold by the evaluate job's computation (`jobs.training.champion.score_on_pairs`:
whole images, --oof-tta, fp32), the K confusion matrices pooled over every held-out pixel.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import ray

from jobs.common.pair_scores import ScoringSettings
from jobs.common.resources import worker_resources
from jobs.training import tracking
from jobs.training.bad_pairs import BadPairsError, read_bad_pairs, shared_ledger
from jobs.training.champion import score_on_pairs
from jobs.training.checkpoints import MODEL_FILE, best_checkpoint
from jobs.training.config import TrainJobConfig
from jobs.training.data_checks import TrainingData
from jobs.training.figures import log_curves
from jobs.training.fold_registry import register_ensemble
from jobs.training.folds import FoldError, GroupBy, fold_pairs, fold_split_record
from jobs.training.job import gather, start_run
from unet_core.metrics import ConfusionMatrix, finite_or_none

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
"""MLflow's tag that nests a run under its parent in the UI."""
DATA_CPU_SHARE = 0.25
"""Share of the cluster's CPUs (at least one) left to Ray Data when deciding how many fold runs
fit at once (as `jobs.common.resources.cpus_per_train_worker` leaves on a local Ray)."""


@dataclasses.dataclass
class FoldRun:
    """One fold's run: its config, data and split record."""

    fold: int
    """The fold validated on (0..K-1)."""
    cfg: TrainJobConfig
    """The job config with the run name ``<run name>-fold<i>`` and ``fold`` set."""
    data: TrainingData
    """Trained on the other folds, validated on this one."""
    split: dict
    """Its split.json (`jobs.training.folds.fold_split_record`)."""


def gather_whole(cfg: TrainJobConfig) -> tuple[TrainingData, list]:
    """The whole set, paired and checked as a single run's (`jobs.training.job.gather`), every
    pair in ``train`` and none in ``val`` (the folds are cut later); and the unchecked pairs."""
    # any split will do: its two sides are joined again
    half = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, val_fraction=0.5))
    data, unchecked = gather(half)
    pairs = sorted([*data.train, *data.val], key=lambda p: p.key)
    return dataclasses.replace(data, train=pairs, val=[], val_root=data.root), unchecked


def fold_groups(cfg: TrainJobConfig, whole: TrainingData) -> GroupBy:
    """What the folds group by: --group-by (a regular expression, or ``names``: the name blocks
    of `jobs.planning.names`, which --plan auto sets when names share groups), else None."""
    from jobs.planning.names import grouping

    return grouping([p.key for p in whole.train], cfg.group_by)


def fold_runs(cfg: TrainJobConfig, whole: TrainingData) -> list[FoldRun]:
    """The K runs of --folds K over the whole set."""
    groups = fold_groups(cfg, whole)
    folds = fold_pairs(whole.train, cfg.folds, seed=cfg.train.seed, group_by=groups)
    runs = []
    for i, val in enumerate(folds):
        train = sorted((p for j, f in enumerate(folds) if j != i for p in f), key=lambda p: p.key)
        if len(train) < cfg.worker_range[1]:
            raise FoldError(
                f"fold {i}: {len(train)} training pairs for {cfg.worker_range[1]} workers; "
                "every worker needs at least one (add data, lower --num-workers or --folds)"
            )
        runs.append(
            FoldRun(
                fold=i,
                cfg=dataclasses.replace(cfg, run_name=f"{cfg.run_name}-fold{i}", fold=i),
                data=dataclasses.replace(whole, train=train, val=list(val)),
                split=fold_split_record(folds, i, groups, whole.root),
            )
        )
    return runs


def one_fold(cfg: TrainJobConfig, whole: TrainingData, fold: int) -> tuple[TrainingData, dict]:
    """`--fold i`: the data and split.json of fold i (the run keeps --run-name)."""
    run = fold_runs(cfg, whole)[fold]
    return run.data, run.split


def concurrent_runs(cfg: TrainJobConfig, k: int) -> int:
    """How many of the K runs fit on the cluster at once: its resources (`ray.cluster_resources`,
    less Ray Data's CPU share) over one run's workers' need; at least 1."""
    need = worker_resources(
        use_gpu=bool(cfg.use_gpu),
        cpus_per_worker=cfg.cpus_per_worker or 1.0,
        gpus_per_worker=cfg.gpus_per_worker,
    )
    workers = cfg.worker_range[1]
    total = ray.cluster_resources()
    room = []
    for key, per_worker in need.items():
        have = total.get(key, 0.0)
        if key == "CPU":
            have -= max(1.0, DATA_CPU_SHARE * have)
        room.append(int(have // (per_worker * workers) + 1e-9))
    return max(1, min(k, *room))


def publish_member(
    cfg: TrainJobConfig, data: TrainingData, result: Any, uri: str, run_id: str, scratch: Path
) -> dict:
    """The end of a fold's run, unregistered: the bad-pair bound, curves, its best checkpoint
    (by val_miou) copied to ``scratch`` and logged as the artifact checkpoint/unet.pt, the run
    finished. Returns its summary."""
    from mlflow.tracking import MlflowClient

    bad = read_bad_pairs()
    allowed = cfg.allowed_bad_pairs(len(data.train) + len(data.val))
    if len(bad) > allowed:
        tracking.finish_run(uri, run_id, "FAILED")
        raise BadPairsError.of(bad, allowed)
    checkpoint, metrics = best_checkpoint(result)
    scratch.mkdir(parents=True, exist_ok=True)
    with checkpoint.as_directory() as folder:
        shutil.copy(Path(folder) / MODEL_FILE, scratch / MODEL_FILE)
    epoch, val_miou = int(metrics["epoch"]), float(metrics["val_miou"])
    client = MlflowClient(uri)
    log_curves(uri, run_id)
    client.log_artifact(run_id, str(scratch / MODEL_FILE), "checkpoint")
    client.set_tag(run_id, "best_epoch", str(epoch))
    tracking.finish_run(uri, run_id)
    return {
        **tracking.run_keys(run_id, cfg.run_name, cfg.experiment, uri),
        "fold": cfg.fold,
        "folds": cfg.folds,
        "model_uri": None,  # not registered: --register-as registers it
        "checkpoint_uri": f"runs:/{run_id}/checkpoint/{MODEL_FILE}",
        "val_mean_iou": val_miou,
        "best_epoch": epoch,
        "pairs": {"train": len(data.train), "val": len(data.val)},
        "data_root": data.root,
        "failed": len(bad),
        "checkpoints": str(result.path),
    }


def _train_member(
    run: FoldRun, weights, uri: str, owned: bool, parent: str, scratch: Path, start: Any = None
):
    """Train one fold (in a thread of `run_folds`): (its summary, its best checkpoint's bytes)."""
    run_id, trainer = start_run(
        run.cfg,
        run.data,
        weights,
        uri,
        owned,
        artifacts={"split.json": run.split},
        tags={PARENT_TAG: parent, "fold": str(run.fold)},
        start=start,
    )
    log.info("fold %d: run %s, %d pairs held out", run.fold, run_id, len(run.data.val))
    try:
        result = trainer.fit()
    except Exception:
        tracking.finish_run(uri, run_id, "FAILED")
        raise
    summary = publish_member(run.cfg, run.data, result, uri, run_id, scratch)
    return summary, (scratch / MODEL_FILE).read_bytes()


def _metric_name(text: str) -> str:
    return re.sub(r"[^\w\-. /]", "_", text)


def out_of_fold(
    cfg: TrainJobConfig, runs: list[FoldRun], checkpoints: list[bytes]
) -> tuple[list[ConfusionMatrix], list[int]]:
    """Each member's confusion matrix on its own fold, and the pairs scored there."""
    settings = ScoringSettings(tile_size=0, tta=cfg.oof_tta, amp=False)  # whole images, fp32
    matrices, scored = [], []
    for run, blob in zip(runs, checkpoints, strict=True):
        (matrix,), count, errors = score_on_pairs(
            [blob], run.data, endpoint_url=cfg.s3_endpoint_url, scoring=settings
        )
        for error in errors.values():
            log.warning("fold %d: out-of-fold scoring leaves out a pair: %s", run.fold, error)
        matrices.append(matrix)
        scored.append(count)
    return matrices, scored


def run_folds(
    cfg: TrainJobConfig,
    whole: TrainingData,
    weights: list[float] | None,
    uri: str,
    owned: bool,
    artifacts: dict,
    started: float,
    start: Any = None,
) -> dict:
    """Train the K fold runs under one parent MLflow run, score them out of fold, register their
    ensemble with --register-as; returns the job's JSON summary."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    runs = fold_runs(cfg, whole)
    parent = tracking.start_or_resume_run(
        tracking_uri=uri,
        experiment=cfg.experiment,
        run_name=cfg.run_name,
        tags={"data_root": whole.root, "storage_path": cfg.storage_path, "folds": str(cfg.folds)},
    )
    folds_record = {"folds": cfg.folds, "splits": [run.split for run in runs]}
    tracking.log_run_inputs(
        uri, parent, params=cfg.to_flat(), artifacts={"folds.json": folds_record, **artifacts}
    )
    parallel = concurrent_runs(cfg, cfg.folds)
    log.info("%d folds of %d pairs: %d run(s) at a time", cfg.folds, len(whole.train), parallel)
    try:
        with (
            tempfile.TemporaryDirectory() as scratch,
            shared_ledger(),
            ThreadPoolExecutor(parallel, thread_name_prefix="fold") as pool,
        ):
            outcomes = list(
                pool.map(
                    lambda run: _train_member(
                        run, weights, uri, owned, parent, Path(scratch, f"fold_{run.fold}"), start
                    ),
                    runs,
                )
            )
        members = [summary for summary, _ in outcomes]
        checkpoints = [blob for _, blob in outcomes]
        matrices, scored = out_of_fold(cfg, runs, checkpoints)
    except Exception:
        tracking.finish_run(uri, parent, "FAILED")
        raise
    pooled = ConfusionMatrix(whole.class_map.num_classes)
    for matrix in matrices:
        pooled.merge(matrix)
    summary = pooled.summary(whole.class_map.names)
    figures = {
        "oof_mean_iou": pooled.mean_iou(),
        "oof_pixel_accuracy": pooled.pixel_accuracy(),
        **{
            f"oof_iou_{_metric_name(name)}": c["iou"]
            for name, c in summary["per_class"].items()
            if c["iou"] is not None
        },
        **{
            f"fold_{run.fold}_mean_iou": m.mean_iou() for run, m in zip(runs, matrices, strict=True)
        },
    }
    now = int(time.time() * 1000)
    MlflowClient(uri).log_batch(
        parent, metrics=[Metric(k, float(v), now, 0) for k, v in figures.items()]
    )
    registration = register_ensemble(cfg, runs, checkpoints, pooled.mean_iou(), uri, parent)
    tracking.finish_run(uri, parent)
    return {
        **tracking.run_keys(parent, cfg.run_name, cfg.experiment, uri),
        "oof_mean_iou": finite_or_none(pooled.mean_iou()),
        "oof_pixel_accuracy": finite_or_none(pooled.pixel_accuracy()),
        "oof_per_class_iou": {n: c["iou"] for n, c in summary["per_class"].items()},
        "oof_pixels": summary["pixels"],
        "oof_tta": cfg.oof_tta,
        "folds": [
            {
                "fold": run.fold,
                "mean_iou": finite_or_none(m.mean_iou()),
                "pairs": count,
                "run_id": member["run_id"],
                "val_mean_iou": member["val_mean_iou"],
                "best_epoch": member["best_epoch"],
            }
            for run, m, count, member in zip(runs, matrices, scored, members, strict=True)
        ],
        "concurrent_runs": parallel,
        **registration,
        "num_workers": cfg.num_workers,
        "data_root": whole.root,
        "seconds": round(time.time() - started, 1),
    }
