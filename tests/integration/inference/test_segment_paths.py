"""The fused path (decode, predict and write inside each CPU actor) and the staged path
(decode tasks -> predictor actors -> write tasks) give the same files and manifest rows."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from jobs import evaluate, segment
from jobs.segmenting.manifest import read_manifest
from tests.integration.inference.helpers import BAD, make_checkpoint, run_main
from unet_core.classes import ClassMap

pytestmark = pytest.mark.integration

PER_RUN = {"job_id", "seconds", "finished_at"}
"""Manifest columns that differ from run to run whatever the path."""


def _files(root) -> dict[str, bytes]:
    """The masks and overlays (the manifest is compared row by row, the QC report names the run
    and its timings)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file()
        and p.parts[len(root.parts)] not in ("manifest", "report", "report.html")
        and p.suffix != ".parquet"
    }


def _rows(summary) -> dict[str, dict]:
    rows = {}
    for row in read_manifest(summary["manifest"]):
        row = {k: v for k, v in row.items() if k not in PER_RUN}
        row["output"] = row["output"] and row["output"].rsplit("/masks/", 1)[1]
        rows[row.pop("relative_path")] = {**row, "input": row["input"].rsplit("/", 1)[1]}
    return rows


def _segment(tmp_path, capsys, inputs, ckpt, path_flag, *extra):
    out = tmp_path / path_flag.lstrip("-")
    code, summary = run_main(
        segment.main,
        ["--input", inputs, "--output", out, "--model", ckpt, path_flag, *extra],
        capsys,
    )
    return code, summary, out


def test_fused_and_staged_paths_write_the_same_bytes_on_the_hostile_folder(
    tmp_path, ray_local, hostile, capsys
):
    ckpt = make_checkpoint(tmp_path / "unet.pt", ClassMap.binary(), base_width=4, depth=2)
    flags = ["--tile-size", 256, "--tile-overlap", 32, "--batch-size", 4, "--confidence"]
    runs = {
        flag: _segment(tmp_path, capsys, hostile, ckpt, flag, *flags)
        for flag in ("--fused", "--no-fused")
    }
    (code_f, fused, out_f), (code_s, staged, out_s) = runs["--fused"], runs["--no-fused"]
    assert code_f == code_s == 1  # the broken files fail in both
    for key in ("total", "ok", "failed"):
        assert fused[key] == staged[key], key
    assert fused["failed"] == len(BAD)
    files = _files(out_f)
    assert files.keys() == _files(out_s).keys()
    assert any(k.startswith("confidence/") for k in files)
    for key, data in _files(out_s).items():
        assert files[key] == data, key  # masks and confidence maps, byte for byte
    assert _rows(fused) == _rows(staged)


def test_fused_and_staged_paths_agree_on_the_synthetic_set_and_in_evaluate(
    tmp_path, ray_local, synthetic_root, capsys
):
    class_map = ClassMap.from_file(synthetic_root / "classes.json")
    ckpt = make_checkpoint(tmp_path / "unet.pt", class_map, base_width=8, depth=2)
    images = synthetic_root / "images"
    results = {
        flag: _segment(tmp_path, capsys, images, ckpt, flag, "--overlays", "--write-batch-size", 5)
        for flag in ("--fused", "--no-fused")
    }
    (code_f, fused, out_f), (code_s, staged, out_s) = results["--fused"], results["--no-fused"]
    assert code_f == code_s == 0
    assert fused["ok"] == staged["ok"] == fused["total"] > 5
    assert _files(out_f) == _files(out_s)  # masks/ and overlays/
    assert _rows(fused) == _rows(staged)

    reports = {}
    for flag in ("--fused", "--no-fused"):
        path = tmp_path / f"report{flag}.parquet"
        code, summary = run_main(
            evaluate.main,
            ["--model", ckpt, "--data", synthetic_root, flag, "--report", path]
            + ["--rand-error-class", "ellipse"],
            capsys,
        )
        assert code == 0, summary
        table = pq.read_table(path).drop_columns(["seconds"]).sort_by("key")
        reports[flag] = (summary, table)
    (sum_f, table_f), (sum_s, table_s) = reports["--fused"], reports["--no-fused"]
    assert table_f.equals(table_s)
    assert table_f["rand_error"].null_count == 0
    for key in (
        "ok",
        "mean_iou",
        "pixel_error",
        "adapted_rand_error",
        "per_class",
        "confusion_matrix",
    ):
        assert sum_f[key] == sum_s[key], key
