"""One evaluation of a model on a labelled set: what `jobs/evaluate.py` calls, and its record
in MLflow.

Images go through the segmentation pipeline (decode tasks -> predictor actors), then the scoring
stage (`jobs.inference.scoring`) returns one confusion matrix per image; the driver sums them.
Figures over the whole set come from the summed matrix (absent classes are left out of the
means); per-image figures are listed too. Pixel error = 1 - pixel accuracy.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np

from jobs.common import fs
from jobs.common.mlflow_store import metric_name, mlflow_client, resolve_tracking_uri
from jobs.common.path_guard import LocalPathError
from jobs.inference.config import EvaluateConfig
from jobs.inference.decode import estimate_image_bytes
from jobs.inference.launch import (
    ActorPlan,
    Session,
    batch_session,
    dry_run_report,
    plan_actors,
    resolved_model_or_problem,
)
from jobs.inference.model_source import (
    checkpoint_digest,
    fetch_checkpoint_bytes,
    resolve_model,
)
from jobs.inference.pipeline import Progress, build_prediction_dataset, cpu_stage_args
from jobs.inference.scoring import image_figures, load_eval_class_map, score_batch
from unet_core.checkpoint import load_checkpoint
from unet_core.data import pair_images_and_masks
from unet_core.metrics import ConfusionMatrix

logger = logging.getLogger("jobs.evaluate")


def run_evaluation(cfg: EvaluateConfig) -> dict[str, Any]:
    """Score the model on every pair under --data (or, with --dry-run, only plan); returns the
    report. Local paths a multi-node cluster cannot share are refused first."""
    with batch_session(cfg) as session:
        if session.problems and not cfg.dry_run:
            raise LocalPathError("; ".join(session.problems))
        actors = plan_actors(cfg, session.view)
        if cfg.dry_run:
            return _dry_run(cfg, session, actors)
        return _evaluate(cfg, session, actors)


def _pairs(cfg: EvaluateConfig, endpoint: str | None) -> list[dict[str, str]]:
    data = fs.absolute(cfg.data)
    pairs = pair_images_and_masks(data, lister=fs.make_lister(data, endpoint_url=endpoint))
    return [
        {"key": p.key, "input": fs.join(data, p.image), "mask_input": fs.join(data, p.mask)}
        for p in pairs
    ]


def _dry_run(cfg: EvaluateConfig, session: Session, actors: ActorPlan) -> dict[str, Any]:
    endpoint = fs.s3_endpoint(cfg.s3_endpoint_url)
    problems: list[str] = []
    model = resolved_model_or_problem(cfg, problems)
    pairs = None
    try:
        pairs = len(_pairs(cfg, endpoint))
    except (ValueError, OSError) as exc:
        problems.append(f"data: {exc}")
    return dry_run_report(
        session,
        actors,
        **model,
        data=fs.absolute(cfg.data),
        inputs=pairs,
        to_process=pairs,
        problems=problems,
    )


def _evaluate(cfg: EvaluateConfig, session: Session, actors: ActorPlan) -> dict[str, Any]:
    import ray

    started = time.perf_counter()
    endpoint = fs.s3_endpoint(cfg.s3_endpoint_url)
    data = fs.absolute(cfg.data)
    resolved = resolve_model(cfg.model, tracking_uri=cfg.tracking_uri)
    checkpoint = fetch_checkpoint_bytes(
        resolved, tracking_uri=cfg.tracking_uri, endpoint_url=endpoint
    )
    loaded = load_checkpoint(checkpoint)
    class_map = load_eval_class_map(data, cfg.class_map, loaded.class_map, endpoint)
    rows = _pairs(cfg, endpoint)
    logger.info("%d image/mask pairs under %s; model %s", len(rows), data, resolved.uri_resolved)

    total = ConfusionMatrix(class_map.num_classes)
    images: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    session.ask_for_first_nodes(actors)
    pipeline_start = time.perf_counter()
    ds = build_prediction_dataset(
        rows,
        cfg=cfg,
        actors=actors,
        view=session.view,
        checkpoint_ref=ray.put(checkpoint),
        channels=loaded.preprocess.channels,
        endpoint_url=endpoint,
        image_bytes=estimate_image_bytes(
            [r["input"] for r in rows[:3]],
            channels=loaded.preprocess.channels,
            endpoint_url=endpoint,
        ),
    )
    ds = ds.map_batches(
        score_batch,
        fn_kwargs={"class_map": class_map.to_dict(), "endpoint_url": endpoint},
        batch_format="pyarrow",
        batch_size=cfg.rows_per_call,
        **cpu_stage_args(cfg, rows=len(rows), batch_size=cfg.rows_per_call, view=session.view),
    )
    progress = Progress(total=len(rows), every=cfg.progress_seconds, label="evaluate")
    k = class_map.num_classes
    for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        batch_failed = 0
        for row in table.to_pylist():
            if row["status"] != "ok":
                batch_failed += 1
                failures.append({"image": row["key"], "error": row["error"]})
                continue
            matrix = np.asarray(row["confusion"], dtype=np.int64).reshape(k, k)
            total.matrix += matrix
            images.append(image_figures(row["key"], matrix, class_map.names))
        progress.update(table.num_rows, batch_failed)
    pipeline_seconds = time.perf_counter() - pipeline_start

    images.sort(key=lambda r: r["image"])
    summary = total.summary(class_map.names)
    report = {
        **summary,
        "images_evaluated": len(images),
        "total": len(rows),
        "ok": len(images),
        "failed": len(failures),
        "failed_fraction": len(failures) / max(1, len(rows)),
        "failures": sorted(failures, key=lambda r: r["image"]),
        "confusion_matrix": total.matrix.tolist(),
        "class_names": class_map.names,
        "data": data,
        **resolved.to_dict(),
        "checkpoint_sha256": checkpoint_digest(checkpoint),
        "images_per_second": len(rows) / pipeline_seconds if pipeline_seconds else 0.0,
        "seconds": round(time.perf_counter() - started, 3),
        "images": images,
    }
    if cfg.log_to_mlflow:
        report["mlflow_run_id"] = log_evaluation(
            report,
            tracking_uri=resolve_tracking_uri(cfg.tracking_uri),
            experiment=cfg.experiment,
            model_name=resolved.name,
            model_version=resolved.version,
        )
    if cfg.report:
        fs.write_bytes_atomic(
            *fs.resolve(cfg.report, endpoint_url=endpoint), json.dumps(report, indent=2).encode()
        )
    return report


def log_evaluation(
    report: dict[str, Any],
    *,
    tracking_uri: str,
    experiment: str,
    model_name: str | None,
    model_version: str | None,
) -> str:
    """An evaluation run (metrics, params, evaluation.json) linked to the model version by
    tags both ways: run tags model_name/model_version, version tags eval_run_id and figures."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    label = f"{model_name}-v{model_version}" if model_name else "checkpoint"
    metrics = {
        "mean_iou": report["mean_iou"],
        "mean_dice": report["mean_dice"],
        "pixel_accuracy": report["pixel_accuracy"],
        "pixel_error": report["pixel_error"],
        **{f"iou_{metric_name(n)}": c["iou"] for n, c in report["per_class"].items()},
        **{f"dice_{metric_name(n)}": c["dice"] for n, c in report["per_class"].items()},
    }
    with mlflow.start_run(run_name=f"evaluate-{label}") as run:
        mlflow.set_tags(
            {
                "job": "evaluate",
                "model_uri": report["model_uri"],
                "model_name": model_name or "",
                "model_version": model_version or "",
                "data": report["data"],
            }
        )
        mlflow.log_params(
            {"images": report["ok"], "failed": report["failed"], "data": report["data"]}
        )
        mlflow.log_metrics({k: v for k, v in metrics.items() if v is not None})
        mlflow.log_dict(report, "evaluation.json")
        run_id = run.info.run_id
    if model_name and model_version:
        client, _ = mlflow_client(tracking_uri)
        tags = {
            "eval_run_id": run_id,
            "eval_data": report["data"],
            "eval_mean_iou": report["mean_iou"],
            "eval_pixel_accuracy": report["pixel_accuracy"],
            "eval_pixel_error": report["pixel_error"],
        }
        for key, value in tags.items():
            client.set_model_version_tag(model_name, model_version, key, str(value))
    logger.info("evaluation logged to MLflow run %s", run_id)
    return run_id
