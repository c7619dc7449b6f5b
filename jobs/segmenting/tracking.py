"""The MLflow record of a segment run (`--log-to-mlflow`, on by default when a tracking store is
named or the model comes from MLflow: `jobs.common.vocabulary.logs_to_mlflow`).

The run is created when the work starts (after the inputs are listed and no refusal stands)
and holds, by the end:

- params: the job's settings (every field of the config but logging and progress, with the
  device, tile size and actor pool as this run resolved them), the model URI as given and as
  pinned, and the checkpoint's sha256;
- tags: ``job=segment``, the model version (`jobs.common.model_lineage.model_tags`, plus its
  logged model id, alias and training run id), ``checkpoint_sha256``, the output, the manifest's
  URI (``manifest``), the QC page's (``report``) and the output settings;
- metrics: total, ok, failed, skipped, rejected, failed_fraction, images_per_second, seconds,
  pipeline_seconds, seconds_to_first_mask;
- artifacts: the summary as ``segment.json`` and, when --report made one, the QC page with
  the images it shows under ``qc_report/``;
- lineage: the logged model as the run's model input (MLflow 3), and on the registered
  version the tags ``segment_run_id`` / ``segment_output`` of the latest run that used it; every
  run of a version is found by `jobs.common.model_lineage.runs_using`.

A job that fails its --max-failed-fraction ends its run as FAILED, one that raises too. The
masks and manifest are the product: an MLflow call that fails is logged as a warning and the
job goes on (a run that could not be created records nothing more).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import re
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from jobs.common import fs
from jobs.common.exits import too_many_failed
from jobs.common.mlflow_store import mlflow_client
from jobs.common.model_lineage import JOB_TAG, model_tags, tag_model_version
from jobs.common.model_source import FetchedModel
from jobs.inference.config import SegmentConfig
from jobs.inference.session import PredictorActors

logger = logging.getLogger(__name__)

JOB = "segment"
"""The run's ``job`` tag."""
REPORT_ARTIFACTS = "qc_report"
"""Artifact folder of the QC page (``qc_report/report.html``) and the images it shows."""
SUMMARY_ARTIFACT = "segment.json"
METRICS = (
    "total",
    "ok",
    "failed",
    "skipped",
    "rejected",
    "failed_fraction",
    "images_per_second",
    "seconds",
    "pipeline_seconds",
    "seconds_to_first_mask",
)
"""Summary keys logged as metrics (those present with a finite number)."""
NOT_PARAMS = frozenset({"log_level", "progress_seconds", "dry_run", "log_to_mlflow", "experiment"})
"""Config fields that change no output and are no setting of the run."""
_ASSET = re.compile(r"""src="(report/[A-Za-z0-9_.\-]+)\"""")


class SegmentRun:
    """One segment job's MLflow run: `start` creates it, `finish` or `end` closes it. Every
    method is a no-op when logging is off or the run could not be created."""

    def __init__(self, cfg: SegmentConfig) -> None:
        self.cfg = cfg
        self.run_id: str | None = None
        self.client: Any = None
        self.model: dict[str, Any] = {}

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Turn a failure of ``what`` into a warning: the masks and manifest must stand."""
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - any MLflow or store error alike
            logger.warning(
                "MLflow: could not %s (%s: %s); the masks and the manifest are not affected",
                what,
                type(exc).__name__,
                exc,
            )

    def start(
        self, fetched: FetchedModel, *, actors: PredictorActors, job_id: str, output: str
    ) -> None:
        """Create the run (RUNNING) with its params and the model version's tags."""
        if not self.cfg.mlflow_logging:
            return
        resolved = fetched.resolved
        self.model = {**resolved.to_dict(), "checkpoint_sha256": fetched.sha256}
        with self._guard(f"create a run in experiment {self.cfg.experiment!r}"):
            client, tracking = mlflow_client(self.cfg.tracking_uri)
            label = f"{resolved.name}-v{resolved.version}" if resolved.name else "checkpoint"
            run = client.create_run(
                _experiment_id(client, self.cfg.experiment),
                run_name=f"{JOB}-{label}",
                tags={
                    JOB_TAG: JOB,
                    **model_tags(self.model),
                    **{k: str(v) for k, v in self.model.items() if v},
                    "job_id": job_id,
                    "output": output,
                },
            )
            self.client, self.run_id = client, run.info.run_id
            logger.info("MLflow run %s in %s (%s)", self.run_id, self.cfg.experiment, tracking)
        if self.run_id is None:
            return
        with self._guard("log the params"):
            params = _params(self.cfg, actors, self.model)
            self.client.log_batch(self.run_id, params=_as_params(params))
        if resolved.model_id:
            with self._guard(f"log logged model {resolved.model_id} as the run's input"):
                from mlflow.entities import LoggedModelInput

                self.client.log_inputs(self.run_id, models=[LoggedModelInput(resolved.model_id)])

    def finish(self, summary: dict[str, Any]) -> str | None:
        """Log the summary's figures, manifest and report, link the model version, end the run:
        FAILED when the job fails its --max-failed-fraction, else FINISHED. Returns the run id."""
        if self.run_id is None:
            return None
        with self._guard("log the metrics and tags"):
            from mlflow.entities import Metric, RunTag

            now = int(time.time() * 1000)
            metrics = [
                Metric(key, float(summary[key]), now, 0)
                for key in METRICS
                if isinstance(summary.get(key), int | float) and math.isfinite(float(summary[key]))
            ]
            tags = {
                k: summary.get(k) for k in ("manifest", "manifest_dataset", "report", "settings")
            }
            tags = [RunTag(k, str(v)) for k, v in tags.items() if v]
            self.client.log_batch(self.run_id, metrics=metrics, tags=tags)
        with self._guard(f"log {SUMMARY_ARTIFACT}"):
            self.client.log_dict(self.run_id, summary, SUMMARY_ARTIFACT)
        if summary.get("report"):
            with self._guard(f"log the QC report {summary['report']} as an artifact"):
                self._log_report(summary["report"])
        name, version = self.model.get("model_name"), self.model.get("model_version")
        if name and version:
            with self._guard(f"tag model version {name}/{version} with this run"):
                tags = {"segment_run_id": self.run_id, "segment_output": summary.get("output")}
                tag_model_version(self.client, name, version, tags)
        failed = too_many_failed(dict(summary), self.cfg.max_failed_fraction)
        self.end("FAILED" if failed else "FINISHED")
        return self.run_id

    def end(self, status: str) -> None:
        """End the run with ``status`` (FINISHED, FAILED, KILLED); once."""
        if self.run_id is None or self.client is None:
            return
        with self._guard(f"end run {self.run_id} as {status}"):
            self.client.set_terminated(self.run_id, status)
        self.client = None
        logger.info("MLflow run %s ended %s", self.run_id, status)

    def _log_report(self, page_uri: str) -> None:
        """The page and the images it links to (``report/*.png`` beside it), read from the
        output (local or s3://) into ``qc_report/``: the artifact opens offline as it is."""
        endpoint = fs.s3_endpoint(self.cfg.s3_endpoint_url)
        page = fs.read_bytes(page_uri, endpoint_url=endpoint)
        base = page_uri.rsplit("/", 1)[0] if fs.is_remote(page_uri) else str(Path(page_uri).parent)
        with tempfile.TemporaryDirectory(prefix="unet-report-") as tmp:
            (Path(tmp) / Path(page_uri).name).write_bytes(page)
            for asset in sorted(set(_ASSET.findall(page.decode("utf-8", "replace")))):
                target = Path(tmp) / asset
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(fs.read_bytes(fs.join(base, asset), endpoint_url=endpoint))
            self.client.log_artifacts(self.run_id, tmp, REPORT_ARTIFACTS)


@contextlib.contextmanager
def recorded(cfg: SegmentConfig) -> Iterator[SegmentRun]:
    """A `SegmentRun` for the job's body: a run still open when the body raises ends FAILED
    (KILLED on Ctrl-C), and the exception goes on."""
    record = SegmentRun(cfg)
    try:
        yield record
    except BaseException as exc:
        record.end("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    finally:
        record.end("FINISHED")  # a body that returned without `finish` (no-op once ended)


def _experiment_id(client, name: str) -> str:
    """The experiment's id; created when missing (by this job or, at once, another)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # created meanwhile by another job
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def _params(cfg: SegmentConfig, actors: PredictorActors, model: Mapping[str, Any]) -> dict:
    """The run's settings: the config's fields (None left out), resolved where the job
    decided them, and the model."""
    params = {
        f.name: getattr(cfg, f.name)
        for f in dataclasses.fields(cfg)
        if f.name not in NOT_PARAMS and getattr(cfg, f.name) is not None
    }
    params.update(
        input=fs.absolute(cfg.input),
        output=fs.absolute(cfg.output),
        model=cfg.model,
        device="gpu" if actors.use_gpu else "cpu",
        device_requested=cfg.device,
        tile_size=cfg.tile_for(use_gpu=actors.use_gpu),
        fused=actors.fused,
        actors_min=actors.pool.min_size,
        actors_max=actors.pool.max_size,
        model_uri=model.get("model_uri"),
        checkpoint_sha256=model.get("checkpoint_sha256"),
    )
    params.pop("tracking_uri", None)  # a server URL may hold credentials
    return params


def _as_params(params: Mapping[str, Any]) -> list:
    from mlflow.entities import Param

    return [Param(k, str(v)) for k, v in sorted(params.items()) if v is not None]
