"""`train --folds K --register-as NAME`: the K fold members registered as one version of an
ensemble model (`unet_core.ensemble`, logged by `jobs.training.ensemble_publish`).

The alias gate holds the ensemble's out-of-fold mean IoU where a single model's gate holds its
validation mIoU: against --min-miou, and against the ``val_miou`` tag of the version holding the
alias (a single model's best validation mIoU, or another ensemble's out-of-fold figure). No
pair is held out from every member, so the holder cannot be rescored on common pairs as
`jobs.training.champion` does for a single run.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from jobs.training.champion import ChampionComparison, alias_holder
from jobs.training.checkpoints import MODEL_FILE
from jobs.training.config import TrainJobConfig


def holder_figure(client, name: str, alias: str) -> ChampionComparison:
    """The version holding ``alias`` and its validation figure (its ``val_miou`` tag: a single
    model's best validation mIoU, an ensemble's out-of-fold mIoU); not compared without one."""
    version = alias_holder(client, name, alias)
    if version is None:
        return ChampionComparison(alias, None)
    tag = client.get_model_version(name, version).tags.get("val_miou")
    try:
        figure = float(tag)
    except (TypeError, ValueError):
        return ChampionComparison(alias, version, refused=f"it has no val_miou tag ({tag!r})")
    return ChampionComparison(alias, version, champion_miou=figure)


def register_ensemble(
    cfg: TrainJobConfig,
    runs: list,
    checkpoints: list[bytes],
    oof_miou: float,
    uri: str,
    parent: str,
) -> dict:
    """With --register-as: the members as one version of an ensemble model
    (`jobs.training.ensemble_publish`), its out-of-fold mean IoU standing for a single model's
    validation figure at the alias gate (--min-miou, and against the ``val_miou`` tag of the
    version holding the alias). Returns the summary's registry keys."""
    import mlflow

    from jobs.training.ensemble_publish import log_ensemble_model
    from unet_core.ensemble import save_ensemble

    if "register_as" not in cfg.given:  # --folds alone: a cross-validation estimate
        return {"model_uri": None, "model_name": None, "model_version": None, "alias_set": False}
    client = mlflow.MlflowClient(uri)
    comparison = holder_figure(client, cfg.register_as, cfg.alias)
    if comparison.champion_miou is not None:
        comparison.candidate_miou = oof_miou
        comparison.pairs = sum(len(run.data.val) for run in runs)
    mlflow.set_experiment(experiment_id=client.get_run(parent).info.experiment_id)
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=parent):
        paths = [Path(tmp, f"fold_{run.fold}.pt") for run in runs]
        for path, blob in zip(paths, checkpoints, strict=True):
            path.write_bytes(blob)
        ensemble = Path(tmp, MODEL_FILE)
        save_ensemble(ensemble, paths, extra={"folds": cfg.folds, "oof_mean_iou": oof_miou})
        reg = log_ensemble_model(
            run_id=parent,
            ensemble_path=ensemble,
            member_paths=paths,
            name=cfg.register_as,
            alias=cfg.alias,
            val_miou=oof_miou,
            min_miou=cfg.min_miou,
            force_alias=cfg.force_alias,
            tags={
                "run_name": cfg.run_name,
                "folds": str(cfg.folds),
                "val_miou_is": "out-of-fold mean IoU",
            },
            comparison=comparison,
            tracking_uri=uri,
        )
        mlflow.set_tags({"model_uri": reg.model_uri})
    return reg.summary()
