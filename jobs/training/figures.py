"""Figures of a finished training run, logged to its MLflow run: the loss/metric curves from
the run's history, and a validation panel (image | prediction | truth) that runs the model."""

from __future__ import annotations

from pathlib import Path

from jobs.training.tracking import metric_histories

CURVE_KEYS = ("train_loss", "val_loss", "val_miou", "val_pixel_accuracy")


def log_curves(tracking_uri: str, run_id: str, folder: Path) -> dict[str, list[float]]:
    """loss_curve.png from the run's metric history (the record, resumed runs included)."""
    from mlflow.tracking import MlflowClient

    from unet_core.viz import loss_curve_png

    history = metric_histories(tracking_uri, run_id, list(CURVE_KEYS))
    path = folder / "loss_curve.png"
    loss_curve_png(history, path, title="training and validation")
    MlflowClient(tracking_uri).log_artifact(run_id, str(path), "figures")
    return history


def log_panel(tracking_uri: str, run_id: str, loaded, samples: list, folder: Path) -> None:
    """validation_panel.png: image | prediction | truth for a few validation pairs."""
    from mlflow.tracking import MlflowClient

    from unet_core.predict import predict, prepare_for_inference
    from unet_core.viz import panel, stack_panels

    if not samples:
        return
    model = prepare_for_inference(loaded.model, "cpu")
    colors = loaded.class_map.colors
    panels = [
        panel(image, predict(model, image, preprocess=loaded.preprocess).mask, mask, colors)
        for _, image, mask in samples
    ]
    path = folder / "validation_panel.png"
    stack_panels(panels).save(path)
    MlflowClient(tracking_uri).log_artifact(run_id, str(path), "figures")
