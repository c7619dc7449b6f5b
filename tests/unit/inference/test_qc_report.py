"""The QC report's figures from a hand-made manifest: the same from Parquet and JSONL, streamed
in batches, and HTML-escaped on the page."""

from __future__ import annotations

import datetime as dt
import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs.reporting import qc_page, qc_report
from jobs.segmenting import manifest

NAMES = ["background", "cell"]


def _rows() -> list[dict]:
    t = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    rows = [
        manifest.base_row(
            input=f"/in/{name}", relative_path=name, output=f"/out/masks/{name}", status="ok",
            class_fractions={"background": bg, "cell": 1 - bg}, mean_confidence=conf,
            model_uri="models:/unet/3", model_version="3", settings="mask_format=indices",
            finished_at=t,
        )
        for name, bg, conf in [("a.png", 0.88, 0.8), ("b.png", 0.47, 0.41), ("c.png", 1.0, 0.97),
                               ("d.png", 0.22, 0.41)]
    ]  # fmt: skip
    rows.append(
        manifest.failed_row(
            "/in/<x>.png", "<x>.png", "/in/<x>.png: not an image & more", finished_at=t
        )
    )
    return rows


def _stats(path, worst=2):
    stats = qc_report.ManifestStats(worst_n=worst)
    for table in qc_report.manifest_batches(str(path)):
        stats.add(table)
    return stats


@pytest.fixture
def manifests(tmp_path, monkeypatch):
    monkeypatch.setattr(qc_report, "BATCH_ROWS", 2)  # several batches per file
    rows = _rows()
    parquet = tmp_path / "manifest.parquet"
    pq.write_table(manifest.rows_to_table(rows, NAMES), parquet, row_group_size=2)
    jsonl = tmp_path / "manifest.jsonl"
    lines = [json.dumps({k: manifest._jsonable(v) for k, v in r.items()}) for r in rows]
    jsonl.write_text("\n".join(lines) + "\n")
    return parquet, jsonl


def test_figures_are_the_same_from_parquet_and_jsonl(manifests):
    for path in manifests:
        stats = _stats(path)
        assert stats.rows == 5 and stats.status == {"ok": 4, "failed": 1}, path
        assert stats.models == [
            {"model_uri": "models:/unet/3", "model_version": "3", "rows": 4},
            {"model_uri": None, "model_version": None, "rows": 1},
        ]
        assert [r["relative_path"] for r in stats.worst] == ["b.png", "d.png"]  # ties by name
        assert stats.failures == [
            {"relative_path": "<x>.png", "error": "/in/<x>.png: not an image & more"}
        ]
        assert stats.conf_hist.sum() == 4 and stats.conf_n == 4
        # 0.41, 0.41, 0.8, 0.97 in bins of 0.05
        assert {i: int(n) for i, n in enumerate(stats.conf_hist) if n} == {8: 2, 16: 1, 19: 1}
        assert stats.conf_sum == pytest.approx(0.8 + 0.41 + 0.97 + 0.41)
        assert list(stats.class_hist) == NAMES
        assert np.flatnonzero(stats.class_hist["cell"]).tolist() == [0, 2, 10, 15]  # width 0.05
        assert stats.class_present == {"background": 4, "cell": 3}
        assert stats.class_sum["background"] == pytest.approx(2.57)


def test_page_escapes_names_and_errors(manifests):
    stats = _stats(manifests[0])
    page = qc_page.render(
        output="/out/<o>", manifest_uri="/out/<o>/manifest.parquet", stats=stats,
        run={"model_uri": "<m>", "ok": 4}, assets={}, thumbs=[],
    )  # fmt: skip
    assert "<x>" not in page and "&lt;x&gt;.png" in page and "not an image &amp; more" in page
    assert "<m>" not in page and "<o>" not in page
    assert 'data-status="failed">1<' in page and 'id="count-total">5<' in page


def _bars(png: bytes) -> np.ndarray:
    """(H, W) bool: the pixels of a chart drawn in the bar colour."""
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    bar = np.array([int(qc_page.BAR[i : i + 2], 16) for i in (1, 3, 5)])
    return np.abs(image - bar).sum(axis=-1) < 30


def _one_bin(index: int, count: int = 5) -> np.ndarray:
    counts = np.zeros(len(qc_report.BINS) - 1, np.int64)
    counts[index] = count
    return counts


def test_histogram_png_draws_each_count_in_its_bin():
    def columns(counts):
        bars = _bars(qc_page.histogram_png(counts, qc_report.BINS, xlabel="$x$"))
        return np.flatnonzero(bars.any(axis=0)), bars

    # One bar per one-bin histogram, one bin (1/20 of the axis) wide, moving right by 12 bins
    # from bin 3 to bin 15.
    # (The same largest count throughout: the axis labels, hence the layout, stay the same.)
    first, _ = columns(_one_bin(0))
    last, _ = columns(_one_bin(19))
    bin_px = (last.max() + 1 - first.min()) / 20
    low, _ = columns(_one_bin(3))
    high, _ = columns(_one_bin(15))
    assert len(low) == pytest.approx(bin_px, abs=2) and len(high) == pytest.approx(bin_px, abs=2)
    assert (low.mean() - first.mean()) / bin_px == pytest.approx(3, abs=0.2)
    assert (high.mean() - low.mean()) / bin_px == pytest.approx(12, abs=0.2)
    # Heights follow the counts: 2 in bin 3 and 4 in bin 10 -> two bars of 1:2.
    cols, bars = columns(_one_bin(3, 2) + _one_bin(10, 4))
    heights = bars.sum(axis=0)
    split = cols[np.argmax(np.diff(cols))]  # the gap between the two bars
    left, right = heights[: split + 1].max(), heights[split + 1 :].max()
    assert left / right == pytest.approx(0.5, abs=0.05)
    assert not _bars(qc_page.histogram_png(_one_bin(0, 0), qc_report.BINS, xlabel="x")).any()


def test_class_histograms_png_one_panel_per_class():
    png = qc_page.class_histograms_png({"a $b": _one_bin(0, 0), "c": _one_bin(15)}, qc_report.BINS)
    bars = _bars(png)
    columns = np.flatnonzero(bars.any(axis=0))
    # Only the second panel (right half) has a bar, near its right end (bin 15 of 20).
    assert len(columns) and columns.min() > bars.shape[1] // 2
    swapped = _bars(
        qc_page.class_histograms_png({"a $b": _one_bin(15), "c": _one_bin(0, 0)}, qc_report.BINS)
    )
    assert np.flatnonzero(swapped.any(axis=0)).max() < bars.shape[1] // 2


def test_report_is_on_by_default_for_local_outputs_only():
    assert qc_report.is_on(None, "/data/out") and not qc_report.is_on(None, "s3://b/out")
    assert qc_report.is_on(True, "s3://b/out") and not qc_report.is_on(False, "/data/out")
