"""The end of a training run (`jobs/train.py`): the bad-pair bound enforced, figures of the
run, the best checkpoint logged and registered with its alias gate (the version holding the
alias scored on this run's validation pairs: `jobs.training.champion`), and the job's JSON
summary."""

from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path
from typing import Any

from jobs.training.bad_pairs import MAX_EXAMPLES, BadPairsError, read_bad_pairs
from jobs.training.champion import compare_with_champion
from jobs.training.checkpoints import MODEL_FILE, best_checkpoint
from jobs.training.config import TrainJobConfig
from jobs.training.data_checks import TrainingData
from jobs.training.datasets import read_samples
from jobs.training.figures import log_curves, log_panel
from jobs.training.registry import log_and_register
from jobs.training.tracking import finish_run, metric_histories, run_keys
from unet_core.checkpoint import load_checkpoint


def publish(
    cfg: TrainJobConfig, data: TrainingData, result: Any, uri: str, run_id: str, scratch: Path
) -> dict:
    """The end of a training run: figures, then the best checkpoint (by val_miou) logged,
    registered and gated; returns the job's JSON summary. `result` is Ray Train's Result.
    Raises BadPairsError (the run marked FAILED) when more pairs failed to decode in training
    than --max-failed-fraction allows (the workers stopped at the end of that epoch)."""
    import mlflow

    bad = read_bad_pairs()
    allowed = cfg.allowed_bad_pairs(len(data.train) + len(data.val))
    if len(bad) > allowed:
        finish_run(uri, run_id, "FAILED")
        raise BadPairsError.of(bad, allowed)
    checkpoint, metrics = best_checkpoint(result)
    with checkpoint.as_directory() as folder:
        shutil.copy(Path(folder) / MODEL_FILE, scratch / MODEL_FILE)
    loaded = load_checkpoint(scratch / MODEL_FILE)
    epoch, val_miou = int(metrics["epoch"]), float(metrics["val_miou"])
    # The run's own experiment made active: MLflow refuses to resume a run of another one than
    # the process's active experiment (set by an earlier job in this process, e.g. evaluate).
    experiment_id = mlflow.MlflowClient(uri).get_run(run_id).info.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    with mlflow.start_run(run_id=run_id):
        log_curves(uri, run_id)
        samples = read_samples(
            data.val_root,
            data.val,
            class_map=data.class_map,
            channels=data.in_channels,
            endpoint_url=cfg.s3_endpoint_url,
            decode=data.decode,
        )
        log_panel(uri, run_id, loaded, samples, scratch)
        comparison = None  # not needed below --min-miou: the gate refuses first
        if math.isfinite(val_miou) and val_miou >= cfg.min_miou:
            comparison = compare_with_champion(
                cfg.register_as,
                cfg.alias,
                candidate=scratch / MODEL_FILE,
                training_data=data,
                tracking_uri=uri,
                endpoint_url=cfg.s3_endpoint_url,
            )
        reg = log_and_register(
            run_id=run_id,
            checkpoint_path=scratch / MODEL_FILE,
            name=cfg.register_as,
            alias=cfg.alias,
            val_miou=val_miou,
            epoch=epoch,
            min_miou=cfg.min_miou,
            force_alias=cfg.force_alias,
            tags={"data_root": data.root, "run_name": cfg.run_name},
            comparison=comparison,
            tracking_uri=uri,
        )
        mlflow.set_tags({"model_uri": reg.model_uri, "best_epoch": str(epoch)})
        if bad:  # all of them, where the summary names the first few
            mlflow.log_dict(bad, "bad_pairs.json")
    speed = metric_histories(uri, run_id, ["images_per_second", "epoch"])
    steady = speed["images_per_second"][1:] or speed["images_per_second"]  # epoch 1 warms up
    print(
        f"alias @{cfg.alias}: {'set' if reg.alias_set else 'not set'} ({reg.reason})",
        file=sys.stderr,
    )
    return {
        **run_keys(run_id, cfg.run_name, cfg.experiment, uri),
        **reg.summary(),
        "val_mean_iou": val_miou,  # the MLflow metric val_miou of the best epoch
        "best_epoch": epoch,
        "epochs": int(max(speed["epoch"], default=0)),
        "images_per_second": round(sum(steady) / len(steady), 2) if steady else math.nan,
        "num_workers": cfg.num_workers,
        "data_root": data.root,
        "failed": len(bad),  # pairs that failed to read or decode in training
        "failed_fraction": len(bad) / max(1, len(data.train) + len(data.val)),
        "failed_inputs": [{"input": k, "error": bad[k]} for k in sorted(bad)[:MAX_EXAMPLES]],
        "checkpoints": str(result.path),
    }
