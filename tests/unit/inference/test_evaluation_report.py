"""The driver side of jobs/evaluate.py without Ray: the scored rows' tally and the Parquet
report written batch by batch and published whole."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.evaluating import scores_file as report_module
from jobs.evaluating.job import FAILURE_EXAMPLES, Tally
from jobs.evaluating.scores_file import ParquetReport
from jobs.evaluating.scoring import image_figures, report_schema

NAMES = ["background", "cell"]


def scored(keys: list[str], *, failed: set[str] = frozenset()) -> pa.Table:
    """Rows as the scoring stage returns them: image i's matrix is [[i, 1], [0, 2]]."""
    rows = []
    for i, key in enumerate(keys):
        if key in failed:
            rows.append({"key": key, "status": "failed", "error": f"{key}: cannot decode"})
            continue
        matrix = np.array([[i, 1], [0, 2]], dtype=np.int64)
        rows.append({"key": key, "status": "ok", **image_figures(matrix, NAMES)})
    return pa.Table.from_pylist(rows, schema=report_schema(NAMES))


def test_image_figures_are_report_columns():
    figures = image_figures(np.array([[3, 1], [0, 0]]), NAMES)
    assert figures["pixels"] == 4 and figures["pixel_accuracy"] == 0.75
    assert figures["iou"] == {"background": 0.75, "cell": 0.0}
    assert figures["support"] == {"background": 4, "cell": 0}
    assert figures["confusion"] == [3, 1, 0, 0]
    pa.Table.from_pylist([figures], schema=report_schema(NAMES))  # fits the schema


def test_tally_sums_matrices_and_keeps_the_first_failures_by_key():
    tally = Tally(2)
    late = [f"z{i:02d}" for i in range(8)]
    early = [f"a{i:02d}" for i in range(8)]
    assert tally.add(scored(["ok0", *late], failed=set(late))) == 8
    assert tally.add(scored([*early, "ok1"], failed=set(early))) == 8
    assert (tally.ok, tally.failed) == (2, 16)
    assert [f["input"] for f in tally.failures] == (early + late)[:FAILURE_EXAMPLES]
    # ok0 is row 0 of its batch, ok1 row 8 of its own: [[0 + 8, 2], [0, 4]]
    assert tally.matrix.matrix.tolist() == [[8, 2], [0, 4]]


def test_report_appears_whole_at_publish(tmp_path, monkeypatch):
    monkeypatch.setattr(report_module, "ROW_GROUP_ROWS", 4)
    path = tmp_path / "out" / "report.parquet"
    with ParquetReport(str(path), report_schema(NAMES)) as report:
        for start in range(0, 10, 3):
            report.write(scored([f"k{i}" for i in range(start, min(start + 3, 10))]))
            assert not path.exists()  # only a hidden temporary sibling so far
        report.publish()
        assert report.local_file == str(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.parquet"]
    assert pq.ParquetFile(path).metadata.num_row_groups == 3  # 4 + 4 + 2 rows, not 4 batches
    assert pq.read_table(path)["key"].to_pylist() == [f"k{i}" for i in range(10)]


def test_a_failed_run_leaves_the_previous_report(tmp_path):
    path = tmp_path / "report.parquet"
    path.write_bytes(b"previous")
    with (
        pytest.raises(RuntimeError, match="pipeline"),
        ParquetReport(str(path), report_schema(NAMES)) as report,
    ):
        report.write(scored(["a"]))
        raise RuntimeError("the pipeline failed")
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["report.parquet"]
