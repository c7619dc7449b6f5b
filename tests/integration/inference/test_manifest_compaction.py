"""`manifest.compact` on a local Ray: Ray Data's hash repartition by relative path and a latest
row per block, under the contract of `jobs.segmenting.manifest` (one latest row per input in
the new files, written before the old files go; a part another job writes meanwhile stays; a
damaged part costs its rows only)."""

from __future__ import annotations

import datetime as dt

import pyarrow.parquet as pq
import pytest

from jobs.segmenting import manifest
from jobs.segmenting.layout import DATA_PREFIX, MANIFEST_DIR, part_name

pytestmark = pytest.mark.integration


def _row(rel: str, *, at: int, model: str = "models:/unet/1", job: str = "job1") -> dict:
    return manifest.base_row(
        input=f"/in/{rel}",
        relative_path=rel,
        status="failed" if rel.startswith("bad") else "ok",
        model_uri=model,
        job_id=job,
        finished_at=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=at),
    )


def test_compaction_keeps_the_latest_row_of_every_input(tmp_path, ray_local, monkeypatch):
    out = str(tmp_path)
    rels = [f"d{i % 7}/img{i:03d}.png" for i in range(60)] + ["bad0.png", "bad1.png"]
    # Three runs over overlapping inputs, the last by a model with other classes.
    for run, (start, stop) in enumerate([(0, 40), (20, 62), (30, 50)]):
        model, names = (f"models:/unet/{run + 1}", ["bg", "fg"] if run < 2 else ["bg", "road"])
        for lo in range(start, stop, 8):
            rows = [
                _row(r, at=run, model=model, job=f"job{run}") for r in rels[lo : min(lo + 8, stop)]
            ]
            manifest.write_part(out, manifest.rows_to_table(rows, names), job_id=f"job{run}")
    (tmp_path / MANIFEST_DIR / "part-damaged.parquet").write_bytes(b"not parquet")
    listed = manifest.dataset_files(out)

    # Another job writes a part after this compaction listed the dataset.
    late = manifest.rows_to_table([_row("late.png", at=9, job="other")], ["bg", "fg"])

    def files_then_a_late_part(*args, **kwargs):
        manifest.write_part(out, late, job_id="other")
        return listed

    dataset_files = manifest.dataset_files
    monkeypatch.setattr(manifest, "dataset_files", files_then_a_late_part)
    monkeypatch.setattr(manifest, "ROWS_PER_DATA_FILE", 20)  # several hash partitions
    monkeypatch.setattr(manifest, "FILES_PER_READ_TASK", 2)  # an input's rows in several reads
    done = manifest.compact(out, job_id="compact1", expected_rows=len(rels))
    monkeypatch.setattr(manifest, "dataset_files", dataset_files)

    assert done["rows"] == len(rels), done
    assert len(done["files"]) > 1
    left = sorted(p.name for p in (tmp_path / MANIFEST_DIR).iterdir())
    data = [n for n in left if n.startswith(DATA_PREFIX)]
    parts = [n for n in left if not n.startswith(DATA_PREFIX)]
    assert len(data) == len(done["files"]) and all("compact1" in n for n in data)
    assert parts == [part_name(["/in/late.png"], "other")]  # untouched
    # Each input in exactly one new file, with the row of the run that finished it last.
    seen: dict[str, dict] = {}
    for name in data:
        for row in pq.read_table(tmp_path / MANIFEST_DIR / name).to_pylist():
            assert row["relative_path"] not in seen, row["relative_path"]
            seen[row["relative_path"]] = row
    assert sorted(seen) == sorted(rels)
    latest_run = {r: max(run for run, (a, b) in enumerate([(0, 40), (20, 62), (30, 50)])
                         if a <= i < b) for i, r in enumerate(rels)}  # fmt: skip
    assert {r: row["job_id"] for r, row in seen.items()} == {
        r: f"job{run}" for r, run in latest_run.items()
    }
    assert set(manifest.latest_rows(out).column("relative_path").to_pylist()) == {*rels, "late.png"}
    assert [r["status"] for r in seen.values()].count("failed") == 2

    # Compacting again once the late part is gone: one compaction's files, left as they are.
    (tmp_path / MANIFEST_DIR / parts[0]).unlink()
    again = manifest.compact(out, job_id="compact2", expected_rows=len(rels))
    assert again == {"files": sorted(done["files"]), "rows": len(rels)}
    assert sorted(p.name for p in (tmp_path / MANIFEST_DIR).iterdir()) == data
