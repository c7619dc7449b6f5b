"""Figures of a finished training run, logged to its MLflow run: the loss/metric curves from
the run's history (matplotlib, drawn on its Agg canvas: no pyplot, no global state), and a
validation panel (image | prediction | truth) that runs the model."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from jobs.training.tracking import metric_histories

CURVE_FILE = "figures/loss_curve.png"
PANELS = (("loss", ("train_loss", "val_loss")), ("score", ("val_miou", "val_pixel_accuracy")))
"""One axis per scale: the losses beside the validation scores (0..1)."""
CURVE_KEYS = tuple(key for _, keys in PANELS for key in keys)
FIGURE_INCHES, FIGURE_DPI = (10.0, 4.0), 100
"""loss_curve.png is 1000 x 400 pixels."""


def loss_curve_figure(history: Mapping[str, Sequence[float | None]], *, title: str | None = None):
    """A `matplotlib.figure.Figure` of each series against epoch (1-based): losses on the
    left, scores on the right. NaN, inf and None are gaps; series may differ in length."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=FIGURE_INCHES, dpi=FIGURE_DPI, layout="constrained")
    FigureCanvasAgg(figure)  # this figure's own canvas; the process's backend is left alone
    for ax, (ylabel, keys) in zip(figure.subplots(1, len(PANELS)), PANELS, strict=True):
        drawn = False
        for key in keys:
            values = [
                float(v) if v is not None and math.isfinite(v) else math.nan
                for v in history.get(key) or []
            ]
            if values:
                marker = "o" if len(values) <= 30 else None
                ax.plot(range(1, len(values) + 1), values, marker=marker, markersize=3, label=key)
                drawn = drawn or any(math.isfinite(v) for v in values)
        if ylabel == "score":
            ax.set_ylim(0.0, 1.02)
        if drawn:
            ax.legend(loc="best", fontsize="small")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    return figure


def log_curves(tracking_uri: str, run_id: str) -> dict[str, list[float]]:
    """figures/loss_curve.png from the run's metric history (the record, resumed runs
    included); returns that history."""
    from mlflow.tracking import MlflowClient

    history = metric_histories(tracking_uri, run_id, list(CURVE_KEYS))
    figure = loss_curve_figure(history, title="training and validation")
    MlflowClient(tracking_uri).log_figure(run_id, figure, CURVE_FILE)
    return history


def log_panel(tracking_uri: str, run_id: str, loaded, samples: list, folder: Path) -> None:
    """validation_panel.png: image | prediction | truth for a few validation pairs."""
    from mlflow.tracking import MlflowClient

    from unet_core.image_decode import display_image
    from unet_core.predict import predict, prepare_for_inference
    from unet_core.viz import panel, stack_panels

    if not samples:
        return
    model = prepare_for_inference(loaded.model, "cpu")
    colors = loaded.class_map.colors
    panels = [
        panel(
            display_image(image),  # 16-bit and float images stretched to 8 bits
            predict(model, image, preprocess=loaded.preprocess).mask,
            mask,
            colors,
        )
        for _, image, mask in samples
    ]
    path = folder / "validation_panel.png"
    stack_panels(panels).save(path)
    MlflowClient(tracking_uri).log_artifact(run_id, str(path), "figures")
