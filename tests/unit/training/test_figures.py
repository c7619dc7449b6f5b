"""The loss/metric figure: a matplotlib Figure on its own Agg canvas, 1000 x 400 pixels."""

from __future__ import annotations

import io
import math
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jobs.training.figures import FIGURE_DPI, FIGURE_INCHES, loss_curve_figure
from tests.support import REPO_ROOT

SIZE = (int(FIGURE_INCHES[0] * FIGURE_DPI), int(FIGURE_INCHES[1] * FIGURE_DPI))


def png_of(figure) -> Image.Image:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    data = buffer.getvalue()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return Image.open(io.BytesIO(data)).convert("RGB")


def test_curves_are_drawn_in_their_colours():
    history = {
        "train_loss": [1.0, 0.6, 0.4, 0.3],
        "val_loss": [1.1, math.nan, 0.5, None],
        "val_miou": [0.2, 0.5, 0.7, 0.8],
        "val_pixel_accuracy": [0.6, 0.8],
    }
    img = np.asarray(png_of(loss_curve_figure(history, title="run"))).astype(int)
    assert img.shape == (SIZE[1], SIZE[0], 3) == (400, 1000, 3)
    # matplotlib's first two line colours (tab:blue, tab:orange), on both axes
    for colour in [(31, 119, 180), (255, 127, 14)]:
        hits = np.abs(img - colour).sum(axis=2) < 30
        assert hits[:, : SIZE[0] // 2].sum() > 50 and hits[:, SIZE[0] // 2 :].sum() > 50, colour


@pytest.mark.parametrize(
    "history", [{}, {"train_loss": [0.7]}, {"val_loss": [math.nan, math.inf]}, {"x": [1.0]}]
)
def test_edge_cases_still_make_a_figure(history):
    img = png_of(loss_curve_figure(history))
    assert img.size == SIZE and len(img.getcolors(maxcolors=1 << 20)) > 2


def test_no_pyplot_global_state():
    probe = (
        "import sys; from jobs.training.figures import loss_curve_figure; "
        "loss_curve_figure({'train_loss': [1.0, 0.5]}).savefig('/dev/null', format='png'); "
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
