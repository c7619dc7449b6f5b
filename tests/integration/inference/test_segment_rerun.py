"""Reruns of jobs/segment.py: skip what is done, redo what is missing, finish what a kill left.

The crash case is planted, so that it is the same every time: the outputs a killed run leaves
(complete masks, temporary siblings of files being written, manifest parts of the batches
that finished and none for the batch in flight) are written with the job's own decode,
predictor and writer code, then the job is rerun. A real SIGKILL of the job in a subprocess
is kept as a smoke test of the same end state.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs import segment
from jobs.common import fs
from jobs.common.model_source import checkpoint_digest
from jobs.inference.decode import decode_images
from jobs.inference.predictor import Predictor, PredictorOptions
from jobs.segmenting.layout import MANIFEST_DIR, MASKS_DIR, mask_key, output_settings, part_name
from jobs.segmenting.manifest import latest_rows, read_manifest, rows_to_table
from jobs.segmenting.writer import MaskWriter, WriterOptions, encode_mask
from tests.integration.inference.helpers import (
    REPO_ROOT,
    assert_throughput,
    expected_masks,
    make_checkpoint,
    run_main,
    tree,
)
from unet_core.classes import ClassMap
from unet_core.synthetic import make_synthetic_dataset

pytestmark = pytest.mark.integration


def test_rerun_skips_then_fills_gaps(tmp_path, ray_local, synthetic_root, capsys):
    class_map = ClassMap.from_file(synthetic_root / "classes.json")
    ckpt = make_checkpoint(tmp_path / "unet.pt", class_map)
    images = sorted((synthetic_root / "images").glob("*.png"))
    n = len(images)
    out = tmp_path / "out"
    args = [
        "--input",
        synthetic_root / "images",
        "--output",
        out,
        "--model",
        ckpt,
        "--batch-size",
        4,
        "--write-batch-size",
        4,
    ]
    code, first = run_main(segment.main, args, capsys)
    assert code == 0 and first["ok"] == n
    masks_before = tree(out / "masks")
    assert len(masks_before) == n

    # Second run: everything skipped, no mask touched; the manifest still holds every input's
    # row, the one the first run wrote (a skip writes no row).
    code, second = run_main(segment.main, args, capsys)
    assert code == 0 and (second["ok"], second["skipped"], second["failed"]) == (0, n, 0)
    assert_throughput(second, processed=0)  # nothing to do: no pipeline, no rate
    assert tree(out / "masks") == masks_before
    rows = read_manifest(second["manifest"])
    assert len(rows) == n and {r["status"] for r in rows} == {"ok"}
    assert all(r["width"] == 64 and r["class_fractions"] for r in rows)
    assert {r["job_id"] for r in rows} == {first["job_id"]}
    assert second["manifest_rows"] == n

    # Delete three masks: exactly those are written again.
    deleted = [p.name for p in images[::6]]
    for name in deleted:
        (out / "masks" / name).unlink()
    code, third = run_main(segment.main, args, capsys)
    assert code == 0 and (third["ok"], third["skipped"]) == (len(deleted), n - len(deleted))
    assert_throughput(third, processed=len(deleted))
    masks_after = tree(out / "masks")
    assert sorted(masks_after) == sorted(masks_before)
    changed = sorted(k for k in masks_after if masks_after[k] != masks_before[k])
    assert changed == sorted(deleted)
    rows = {r["relative_path"]: r["job_id"] for r in read_manifest(third["manifest"])}
    assert rows == {
        p.name: third["job_id"] if p.name in deleted else first["job_id"] for p in images
    }

    # --overwrite redoes everything.
    code, fourth = run_main(segment.main, [*args, "--overwrite"], capsys)
    assert code == 0 and (fourth["ok"], fourth["skipped"]) == (n, 0)
    assert all(masks_after[k] != v for k, v in tree(out / "masks").items())


# --- a killed run, planted ---------------------------------------------------------------------


def _tmp_sibling(path: Path, data: bytes) -> Path:
    """A temporary sibling as `jobs.common.fs.write_bytes_atomic` names it, holding ``data``
    (the start of the file it was writing when the process died), as old as a kill two hours
    ago: older than --temp-max-age (an hour), the age at which a rerun removes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    tmp.write_bytes(data)
    os.utime(tmp, (time.time() - 7200, time.time() - 7200))
    return tmp


def _model_rows(checkpoint: Path, inputs: list[tuple[str, str]]) -> pa.Table:
    """What the predictor stage hands the write stage for these (input URI, relative path)
    rows: the job's own decode and Predictor code, run in-process."""
    rows = pa.Table.from_pylist([{"input": uri, "relative_path": rel} for uri, rel in inputs])
    return Predictor(checkpoint.read_bytes(), PredictorOptions())(decode_images(rows, channels=3))


def _plant_killed_run(out: Path, checkpoint: Path, inputs: list[tuple[str, str]], class_map):
    """The outputs of a run killed mid-way, write batches of 4 (in the order below; Ray Data
    runs several write tasks at once, so any mix of these is what a kill can leave):

    - batch A finished: its 4 masks, then its manifest part;
    - batch B wrote its 4 masks and was killed while writing its part (a part temporary);
    - batch C wrote 2 masks, was killed while writing the third (a mask temporary), never
      reached the fourth, and so wrote no part;
    - batch D never started;
    - an earlier interrupted run (``--overwrite``) left a temporary beside one of A's masks.

    Returns (relative paths whose mask is complete AND recorded: A's; A's manifest rows by
    relative path). The masks of B and C have no manifest row, so the rerun redoes them."""
    writer = MaskWriter(
        WriterOptions(
            output=str(out),
            class_map=class_map.to_dict(),
            model_uri=str(checkpoint),
            checkpoint_sha256=checkpoint_digest(checkpoint.read_bytes()),
            settings=output_settings(
                mask_format="indices", tta="none", tile_size=512, tile_overlap=64
            ),
            job_id="killed-run",
        )
    )
    a, b, c = inputs[0:4], inputs[4:8], inputs[8:12]
    part_a = writer(_model_rows(checkpoint, a))  # what a finished write task does
    rows_b = _model_rows(checkpoint, b)
    written_b = [writer.write_row(row, None) for row in rows_b.to_pylist()]
    part_b = io.BytesIO()
    pq.write_table(rows_to_table(written_b, class_map.names), part_b)
    part_b_path = out / MANIFEST_DIR / part_name(uri for uri, _ in b)
    _tmp_sibling(part_b_path, part_b.getvalue()[: len(part_b.getvalue()) // 2])
    rows_c = _model_rows(checkpoint, c).to_pylist()
    for row in rows_c[:2]:
        writer.write_row(row, None)
    third = rows_c[2]
    mask = np.frombuffer(third["mask"], np.uint8).reshape(third["height"], third["width"])
    data = encode_mask(mask, mask_format="indices", class_map=class_map)
    _tmp_sibling(out / MASKS_DIR / mask_key(third["relative_path"]), data[: len(data) // 2])
    _tmp_sibling(out / MASKS_DIR / mask_key(a[1][1]), b"\x89PNG\r\n")
    complete = [rel for _, rel in (*a, *b, *c[:2])]
    assert sorted(p.name for p in (out / MASKS_DIR).glob("*.png")) == sorted(complete)
    assert not part_b_path.exists() and len(list((out / MANIFEST_DIR).glob("part-*"))) == 1
    return [rel for _, rel in a], {r["relative_path"]: r for r in part_a.to_pylist()}


def _hidden(root: Path) -> list[str]:
    return [k for k in tree(root) if any(part.startswith(".") for part in k.split("/"))]


def _assert_finished_once(out, summary, planted, recorded, part_a, checkpoint, images) -> None:
    """The end state of a rerun over the planted kill (see the test)."""
    n, redo = len(images), sorted({p.name for p in images} - set(recorded))
    assert (summary["total"], summary["ok"], summary["skipped"], summary["failed"]) == (
        n, len(redo), len(recorded), 0,
    )  # fmt: skip
    assert_throughput(summary, processed=len(redo))
    after = tree(out)

    # No temporary is left; A's masks (complete and recorded) are the planted files,
    # untouched; every other input's mask was written by this run (the orphans of B and C
    # again); one mask per input and nothing else; all equal to predict().
    assert _hidden(out) == []
    for name in recorded:
        assert after[f"{MASKS_DIR}/{name}"] == planted[f"{MASKS_DIR}/{name}"], name
    assert sorted(k for k in after if k.startswith(f"{MASKS_DIR}/")) == [
        f"{MASKS_DIR}/{p.name}" for p in images
    ]
    expected = expected_masks(checkpoint, images)
    for p in images:
        got = np.asarray(Image.open(out / MASKS_DIR / p.name))
        np.testing.assert_array_equal(got, expected[p.name], err_msg=p.name)

    # The manifest dataset, compacted: every input once; A's rows as A's part recorded them
    # (job "killed-run"), every other input processed exactly once by this run.
    assert not [k for k in after if k.startswith(f"{MANIFEST_DIR}/part-")]  # compacted
    latest = latest_rows(str(out)).to_pylist()
    assert sorted(r["relative_path"] for r in latest) == [p.name for p in images]
    by_rel = {r["relative_path"]: r for r in latest}
    assert {rel: r["job_id"] for rel, r in by_rel.items()} == {
        p.name: "killed-run" if p.name in recorded else summary["job_id"] for p in images
    }
    assert {r["status"] for r in latest} == {"ok"}
    assert all(r["output"] == str(out / MASKS_DIR / rel) for rel, r in by_rel.items())
    for rel, row in part_a.items():
        for key in ("input", "width", "height", "class_fractions", "mean_confidence",
                    "model_uri", "job_id"):  # fmt: skip
            assert by_rel[rel][key] == row[key], (rel, key)
    for rel in redo:
        row = by_rel[rel]
        assert (row["width"], row["height"]) == expected[rel].shape[::-1]
        assert row["class_fractions"]["background"] == pytest.approx(
            float((expected[rel] == 0).mean())
        )
    # manifest.parquet holds the same rows, sorted.
    final = read_manifest(summary["manifest"])
    assert [r["relative_path"] for r in final] == [p.name for p in images]


def test_rerun_after_a_kill_finishes_everything_once(tmp_path, ray_local, synthetic_root, capsys):
    class_map = ClassMap.from_file(synthetic_root / "classes.json")
    ckpt = make_checkpoint(tmp_path / "unet.pt", class_map)
    images = sorted((synthetic_root / "images").glob("*.png"))
    base = fs.absolute(synthetic_root / "images")
    inputs = [(fs.join(base, p.name), p.name) for p in images]  # as the job lists them
    out = tmp_path / "out"
    recorded, part_a = _plant_killed_run(out, ckpt, inputs, class_map)
    assert len(recorded) == 4 and len(images) == 16
    planted = tree(out)
    assert len(_hidden(out)) == 3  # the three temporaries

    args = ["--input", base, "--output", out, "--model", ckpt, "--batch-size", 4,
            "--write-batch-size", 4]  # fmt: skip
    code, summary = run_main(segment.main, args, capsys)
    assert code == 0, summary
    _assert_finished_once(out, summary, planted, recorded, part_a, ckpt, images)


# --- a real SIGKILL (smoke test) --------------------------------------------------------------


def _final_masks(masks_dir: Path) -> set[str]:
    """Masks under their final names (temporaries are hidden)."""
    if not masks_dir.exists():
        return set()
    return {p.name for p in masks_dir.glob("*.png") if not p.name.startswith(".")}


def _session_pids(sid: int) -> list[int]:
    """Live processes of session ``sid``: the job (started in a session of its own) and all it
    started, its Ray included, wherever they were re-parented. Zombies are dead already."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def _kill_job(proc: subprocess.Popen, timeout: float = 60) -> None:
    """SIGKILL the job and everything of its session; fail unless all are gone in time."""
    with contextlib.suppress(ProcessLookupError):  # the group at once, as a kill of the job
        os.killpg(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while pids := _session_pids(proc.pid):
        if time.monotonic() > deadline:
            pytest.fail(f"processes of the killed job still alive after {timeout} s: {pids}")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # it died meanwhile
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    proc.wait(timeout=timeout)


def _wait_for_first_mask(masks_dir: Path, proc: subprocess.Popen, log: Path, timeout: float):
    """Return as soon as a mask exists under its final name (or the job ended having written
    some); fail the test when none appears within ``timeout`` or the job ends without one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _final_masks(masks_dir):
            return
        if proc.poll() is not None:
            if _final_masks(masks_dir):  # it finished between two looks
                return
            tail = log.read_text(errors="replace")[-3000:]
            pytest.fail(f"the job ended (exit {proc.returncode}) without a mask:\n{tail}")
        time.sleep(0.02)
    pytest.fail(f"no mask under {masks_dir} within {timeout} s")


@pytest.mark.slow
def test_sigkill_then_rerun_gives_the_complete_set(tmp_path, ray_local, capsys, record_property):
    data = tmp_path / "data"
    class_map = make_synthetic_dataset(data, num_images=32, size=128, seed=3)
    images = sorted((data / "images").glob("*.png"))
    n = len(images)
    ckpt = make_checkpoint(tmp_path / "unet.pt", class_map, base_width=8, depth=2)
    out = tmp_path / "out"
    args = ["--input", data / "images", "--output", out, "--model", ckpt, "--batch-size", 1,
            "--write-batch-size", 1]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    log = tmp_path / "job.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "jobs" / "segment.py"), *map(str, args),
             "--num-cpus", "4"],
            cwd=tmp_path,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a session of its own: the driver and the Ray it started
        )  # fmt: skip
        try:
            _wait_for_first_mask(out / MASKS_DIR, proc, log, timeout=240)
        finally:
            _kill_job(proc)
    # The kill usually lands mid-run; when the job had finished first (exit 0), the rerun must
    # skip everything, which the assertions below check just the same. Done = a complete mask
    # with its manifest row (a mask whose batch's part the kill prevented is redone).
    masks = _final_masks(out / MASKS_DIR)
    rows = latest_rows(str(out)).to_pylist()
    done = {r["relative_path"] for r in rows if r["status"] == "ok"} & masks
    record_property("killed_mid_run", proc.returncode != 0)
    record_property("masks_before_rerun", len(masks))
    record_property("recorded_before_rerun", len(done))
    before = tree(out / MASKS_DIR)

    # Temporaries go by age alone: one the kill left was last written before the kill, so
    # after this pause it is older than the rerun's --temp-max-age of 1 s (a live write's
    # lives for milliseconds). Without the pause the rerun can list the output within 1 s of
    # the kill (Ray is already up here) and rightly leave a temporary that young alone.
    time.sleep(1.5)
    code, summary = run_main(segment.main, [*args, "--temp-max-age", 1], capsys)
    assert code == 0, summary
    assert (summary["total"], summary["ok"], summary["skipped"], summary["failed"]) == (
        n, n - len(done), len(done), 0,
    )  # fmt: skip
    assert_throughput(summary, processed=n - len(done))
    after = tree(out / MASKS_DIR)
    assert sorted(after) == [p.name for p in images]  # one mask per input, nothing else
    assert all(after[name] == before[name] for name in done)  # done masks untouched
    assert _hidden(out) == []  # no temporary left anywhere under the output
    assert not (out / MANIFEST_DIR / "_leases").exists() or not list(
        (out / MANIFEST_DIR / "_leases").iterdir()
    )  # the killed job's lease went with it
    expected = expected_masks(ckpt, images)
    for p in images:
        np.testing.assert_array_equal(
            np.asarray(Image.open(out / MASKS_DIR / p.name)), expected[p.name], err_msg=p.name
        )
    rows = read_manifest(summary["manifest"])
    assert [r["relative_path"] for r in rows] == [p.name for p in images]
    assert {r["status"] for r in rows} == {"ok"}
    redone = {r["relative_path"] for r in rows if r["job_id"] == summary["job_id"]}
    assert redone == {p.name for p in images} - done
