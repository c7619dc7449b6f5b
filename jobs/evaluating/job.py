"""One evaluation of a model on a labelled set: what `jobs/evaluate.py` calls, and its record
in MLflow.

Images go through the segmentation pipeline (decode tasks -> predictor actors), then the scoring
stage (`jobs.evaluating.scoring`) returns one row per image with its confusion matrix and
figures. As each batch of rows arrives the driver adds its matrices into one (`Tally`) and, with
--scores-file, appends the rows to the Parquet report (`jobs.evaluating.scores_file`): its memory does not
grow with the number of images. Figures over the whole set come from the summed matrix (absent
classes are left out of the means). Pixel error = 1 - pixel accuracy. The adapted Rand error
(--rand-error-class) is per image, so the summary's is the mean of the per-image (per-slice)
values, over the images where it is defined. The alias gate of training scores a version by the
same computation (`jobs.common.pair_scores`): with `--amp off`, evaluate reports its figure.
"""

from __future__ import annotations

import contextlib
import logging
import time
from fractions import Fraction
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from jobs.common import fs
from jobs.common.mlflow_store import metric_name, mlflow_client, resolve_tracking_uri
from jobs.common.model_lineage import JOB_TAG, model_tags, tag_model_version
from jobs.common.model_source import fetch_model
from jobs.common.path_guard import LocalPathError
from jobs.evaluating.scores_file import ParquetReport
from jobs.evaluating.scoring import (
    Scorer,
    load_eval_class_map,
    rand_error_class_index,
    report_schema,
)
from jobs.inference.config import EvaluateConfig
from jobs.inference.decode import estimate_image_bytes
from jobs.inference.pipeline import Progress, Sink, build_pipeline
from jobs.inference.session import (
    PredictorActors,
    Session,
    batch_session,
    choose_predictor_actors,
    dry_run_summary,
    fetched_model_or_problem,
)
from unet_core.classes import ClassMap
from unet_core.data import pair_images_and_masks
from unet_core.metrics import ConfusionMatrix

logger = logging.getLogger(__name__)

FAILURE_EXAMPLES = 10
"""Failures listed in the summary (those of smallest key); `failed` counts them all."""


def run_evaluation(cfg: EvaluateConfig) -> dict[str, Any]:
    """Score the model on every pair under --data (or, with --dry-run, only plan); returns the
    report. Local paths a multi-node cluster cannot share are refused first."""
    with batch_session(cfg) as session:
        if session.problems and not cfg.dry_run:
            raise LocalPathError("; ".join(session.problems))
        actors = choose_predictor_actors(cfg, session.view)
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


def _dry_run(cfg: EvaluateConfig, session: Session, actors: PredictorActors) -> dict[str, Any]:
    endpoint = fs.s3_endpoint(cfg.s3_endpoint_url)
    problems: list[str] = []
    fetched = fetched_model_or_problem(cfg, problems, endpoint_url=endpoint)
    model = fetched.resolved.to_dict() if fetched else {}
    pairs = None
    try:
        pairs = len(_pairs(cfg, endpoint))
    except (ValueError, OSError) as exc:
        problems.append(f"data: {exc}")
    return dry_run_summary(
        session,
        actors,
        **model,
        data=fs.absolute(cfg.data),
        inputs=pairs,
        to_process=pairs,
        problems=problems,
    )


RAND_COLUMNS = {"rand_error": "error", "rand_precision": "precision", "rand_recall": "recall"}
"""Per-image Rand columns of the report -> their means' keys in the summary (adapted_rand_*)."""


class Tally:
    """What the driver keeps of the scored rows: their summed confusion matrix, the counts, the
    `FAILURE_EXAMPLES` failures of smallest key and the sums of the per-image Rand figures,
    whatever the number of images."""

    def __init__(self, num_classes: int) -> None:
        self.matrix = ConfusionMatrix(num_classes)
        self.ok = 0
        self.failed = 0
        self.failures: list[dict[str, str]] = []
        # Exact sums (Fractions of the floats), so the means do not depend on the order in
        # which rows arrive (fused and staged paths, completion order).
        self.rand_sums = {c: Fraction(0) for c in RAND_COLUMNS}
        self.rand_counts = dict.fromkeys(RAND_COLUMNS, 0)

    def add(self, table: pa.Table) -> int:
        """Count one batch of `scoring.report_schema` rows; returns how many of them failed."""
        ok = pc.equal(table["status"], "ok")
        scored, failed = table.filter(ok), table.filter(pc.invert(ok))
        if scored.num_rows:
            k = self.matrix.num_classes
            counts = pc.list_flatten(scored["confusion"]).to_numpy()  # (n * K * K,)
            self.matrix.matrix += counts.reshape(-1, k, k).sum(axis=0)
            for column in RAND_COLUMNS:
                values = scored[column].drop_null().to_pylist()
                self.rand_sums[column] += sum(map(Fraction, values), Fraction(0))
                self.rand_counts[column] += len(values)
        if failed.num_rows:
            examples = failed.select(["key", "error"]).sort_by("key").slice(0, FAILURE_EXAMPLES)
            merged = self.failures + [
                {"input": r["key"], "error": r["error"]} for r in examples.to_pylist()
            ]
            self.failures = sorted(merged, key=lambda r: r["input"])[:FAILURE_EXAMPLES]
        self.ok += scored.num_rows
        self.failed += failed.num_rows
        return failed.num_rows

    def rand_means(self) -> dict[str, float | int | None]:
        """``adapted_rand_error``/``_precision``/``_recall``: the means of the per-image values
        over the images where each is defined (None when none is), and ``adapted_rand_images``,
        how many images the error's mean is over."""
        means: dict[str, float | int | None] = {
            f"adapted_rand_{name}": (
                float(self.rand_sums[c] / self.rand_counts[c]) if self.rand_counts[c] else None
            )
            for c, name in RAND_COLUMNS.items()
        }
        means["adapted_rand_images"] = self.rand_counts["rand_error"]
        return means


def _evaluate(cfg: EvaluateConfig, session: Session, actors: PredictorActors) -> dict[str, Any]:
    started = time.perf_counter()
    endpoint = fs.s3_endpoint(cfg.s3_endpoint_url)
    data = fs.absolute(cfg.data)
    fetched = fetch_model(cfg.model, tracking_uri=cfg.tracking_uri, endpoint_url=endpoint)
    resolved, checkpoint, loaded = fetched.resolved, fetched.checkpoint, fetched.loaded
    class_map = load_eval_class_map(data, cfg.class_map, loaded.class_map, endpoint)
    rand_class = rand_error_class_index(class_map, cfg.rand_error_class)
    rows = _pairs(cfg, endpoint)
    total = len(rows)
    logger.info("%d image/mask pairs under %s; model %s", total, data, resolved.uri_resolved)

    # The report is opened first, so that a bad destination fails before any work.
    opened = (
        ParquetReport(cfg.scores_file, report_schema(class_map.names), endpoint_url=endpoint)
        if cfg.scores_file
        else contextlib.nullcontext()
    )
    with opened as report:
        session.ask_for_first_nodes(actors)
        pipeline_start = time.perf_counter()
        ds = _scored_dataset(
            cfg,
            session,
            actors,
            rows,
            checkpoint=checkpoint,
            channels=loaded.preprocess.channels,
            pixel_values=loaded.preprocess.pixel_values,
            class_map=class_map,
            rand_class=rand_class,
        )
        del rows  # the dataset's blocks hold them now
        progress = Progress(total=total, every=cfg.progress_seconds, label="evaluate")
        tally = Tally(class_map.num_classes)
        for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            progress.update(table.num_rows, tally.add(table))
            if report is not None:
                report.write(table)
        pipeline_seconds = time.perf_counter() - pipeline_start

        summary = {
            **tally.matrix.summary(class_map.names),
            "images_evaluated": tally.ok,
            "total": total,
            "ok": tally.ok,
            "failed": tally.failed,
            "failed_fraction": tally.failed / max(1, total),
            "failed_inputs": tally.failures,
            **(
                {"adapted_rand_class": cfg.rand_error_class, **tally.rand_means()}
                if rand_class is not None
                else {}
            ),
            "confusion_matrix": tally.matrix.matrix.tolist(),
            "class_names": class_map.names,
            "data": data,
            **resolved.to_dict(),
            "checkpoint_sha256": fetched.sha256,
            "images_per_second": total / pipeline_seconds if pipeline_seconds else 0.0,
            "pipeline_seconds": round(pipeline_seconds, 3),
        }
        if report is not None:
            report.publish()
            summary["scores_file"] = report.uri
        summary["seconds"] = round(time.perf_counter() - started, 3)
        if cfg.mlflow_logging:
            summary["mlflow_run_id"] = log_evaluation(
                summary,
                tracking_uri=resolve_tracking_uri(cfg.tracking_uri),
                experiment=cfg.experiment,
                model_name=resolved.name,
                model_version=resolved.version,
                report_file=report.local_file if report is not None else None,
            )
    return summary


def _scored_dataset(
    cfg: EvaluateConfig,
    session: Session,
    actors: PredictorActors,
    rows: list[dict[str, str]],
    *,
    checkpoint: bytes,
    channels: int,
    class_map: ClassMap,
    rand_class: int | None = None,
    pixel_values: str = "uint8",
):
    """The lazy Dataset of ``rows`` (image/mask pairs) after decode, predict and score: one
    `scoring.report_schema` row per pair (with the Rand figures of class ``rand_class``)."""
    import ray

    endpoint = fs.s3_endpoint(cfg.s3_endpoint_url)
    return build_pipeline(
        rows,
        cfg=cfg,
        actors=actors,
        view=session.view,
        checkpoint_ref=ray.put(checkpoint),
        channels=channels,
        pixel_values=pixel_values,
        endpoint_url=endpoint,
        sink=Sink(
            Scorer,
            {
                "class_map": class_map.to_dict(),
                "endpoint_url": endpoint,
                "decode": cfg.decode_options,
                "rand_class": rand_class,
            },
            cfg.rows_per_call,
        ),
        image_bytes=estimate_image_bytes(
            [r["input"] for r in rows[:3]],
            channels=channels,
            endpoint_url=endpoint,
            pixel_values=pixel_values,
        ),
    )


RAND_METRICS = ("adapted_rand_error", "adapted_rand_precision", "adapted_rand_recall")
"""Summary keys logged as MLflow metrics when present (--rand-error-class)."""


def log_evaluation(
    report: dict[str, Any],
    *,
    tracking_uri: str,
    experiment: str,
    model_name: str | None,
    model_version: str | None,
    report_file: str | None = None,
) -> str:
    """An evaluation run (metrics, params, the summary as evaluation.json, the Parquet report
    ``report_file`` under its own name) linked to the model version by tags both ways: run tags
    model_name/model_version, version tags eval_run_id and figures (with the adapted Rand error's
    mean, and its class as a param, when the summary has them)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    label = f"{model_name}-v{model_version}" if model_name else "checkpoint"
    metrics = {
        "mean_iou": report["mean_iou"],
        "mean_dice": report["mean_dice"],
        "pixel_accuracy": report["pixel_accuracy"],
        "pixel_error": report["pixel_error"],
        **{k: report.get(k) for k in RAND_METRICS},
        **{f"iou_{metric_name(n)}": c["iou"] for n, c in report["per_class"].items()},
        **{f"dice_{metric_name(n)}": c["dice"] for n, c in report["per_class"].items()},
    }
    with mlflow.start_run(run_name=f"evaluate-{label}") as run:
        mlflow.set_tags(
            {
                JOB_TAG: "evaluate",
                **model_tags({**report, "model_name": model_name, "model_version": model_version}),
                "data": report["data"],
            }
        )
        mlflow.log_params(
            {
                "images": report["ok"],
                "failed": report["failed"],
                "data": report["data"],
                **(
                    {"rand_error_class": report["adapted_rand_class"]}
                    if "adapted_rand_class" in report
                    else {}
                ),
            }
        )
        mlflow.log_metrics({k: v for k, v in metrics.items() if v is not None})
        mlflow.log_dict(report, "evaluation.json")
        if report_file:
            mlflow.log_artifact(report_file)
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
        if report.get("adapted_rand_error") is not None:  # --rand-error-class
            tags["eval_adapted_rand_error"] = report["adapted_rand_error"]
        tag_model_version(client, model_name, model_version, tags)
    logger.info("evaluation logged to MLflow run %s", run_id)
    return run_id
