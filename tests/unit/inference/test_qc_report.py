"""The QC report's figures from a hand-made manifest: the same from Parquet and JSONL, streamed
in batches, and HTML-escaped on the page."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

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


def test_histogram_pngs():
    counts = np.arange(len(qc_report.BINS) - 1)
    assert qc_page.histogram_png(counts, qc_report.BINS, xlabel="$x$").startswith(b"\x89PNG")
    png = qc_page.class_histograms_png({"a $b": counts, "c": counts}, qc_report.BINS)
    assert png.startswith(b"\x89PNG")


def test_report_is_on_by_default_for_local_outputs_only():
    assert qc_report.is_on(None, "/data/out") and not qc_report.is_on(None, "s3://b/out")
    assert qc_report.is_on(True, "s3://b/out") and not qc_report.is_on(False, "/data/out")
