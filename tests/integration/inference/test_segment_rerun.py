"""Reruns of jobs/segment.py: skip what is done, redo what is missing, survive SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from jobs import segment
from jobs.inference.manifest import read_manifest
from tests.integration.inference.helpers import (
    REPO_ROOT,
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

    # Second run: everything skipped, no mask touched, the manifest still lists every input.
    code, second = run_main(segment.main, args, capsys)
    assert code == 0 and (second["ok"], second["skipped"], second["failed"]) == (0, n, 0)
    assert tree(out / "masks") == masks_before
    rows = read_manifest(second["manifest"])
    assert len(rows) == n and {r["status"] for r in rows} == {"skipped"}
    # Skipped rows carry what the first run recorded (from its manifest parts).
    assert all(r["width"] == 64 and r["class_fractions"] for r in rows)
    assert {r["job_id"] for r in rows} == {second["job_id"]}

    # Delete three masks: exactly those are written again.
    deleted = [p.name for p in images[::6]]
    for name in deleted:
        (out / "masks" / name).unlink()
    code, third = run_main(segment.main, args, capsys)
    assert code == 0 and (third["ok"], third["skipped"]) == (len(deleted), n - len(deleted))
    masks_after = tree(out / "masks")
    assert sorted(masks_after) == sorted(masks_before)
    changed = sorted(k for k in masks_after if masks_after[k] != masks_before[k])
    assert changed == sorted(deleted)
    rows = {r["relative_path"]: r["status"] for r in read_manifest(third["manifest"])}
    assert rows == {p.name: "ok" if p.name in deleted else "skipped" for p in images}

    # --overwrite redoes everything.
    code, fourth = run_main(segment.main, [*args, "--overwrite"], capsys)
    assert code == 0 and (fourth["ok"], fourth["skipped"]) == (n, 0)
    assert all(masks_after[k] != v for k, v in tree(out / "masks").items())


def _wait_for_masks(masks_dir, proc, at_least: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        count = len(list(masks_dir.rglob("*.png"))) if masks_dir.exists() else 0
        if count >= at_least:
            return count
        if proc.poll() is not None:
            pytest.fail(f"the job ended (exit {proc.returncode}) before {at_least} masks existed")
        time.sleep(0.05)
    pytest.fail(f"fewer than {at_least} masks after {timeout} s")


@pytest.mark.slow
def test_sigkill_then_rerun_gives_the_complete_set(tmp_path, ray_local, capsys):
    data = tmp_path / "data"
    class_map = make_synthetic_dataset(data, num_images=48, size=160, seed=3)
    images = sorted((data / "images").glob("*.png"))
    # Big enough (with TTA) that the job is still writing when it is killed.
    ckpt = make_checkpoint(tmp_path / "unet.pt", class_map, base_width=16, depth=3)
    out = tmp_path / "out"
    args = [
        "--input",
        data / "images",
        "--output",
        out,
        "--model",
        ckpt,
        "--tta",
        "--batch-size",
        1,
        "--write-batch-size",
        1,
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO_ROOT / "jobs" / "segment.py"),
            *map(str, args),
            "--num-cpus",
            "4",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the driver and the Ray it started
    )
    try:
        written = _wait_for_masks(out / "masks", proc, at_least=3, timeout=240)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert written < len(images), "the job finished before the kill: make it slower"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until every process of the group has gone
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    done_before = {p.name for p in (out / "masks").glob("*.png")}

    code, summary = run_main(segment.main, args, capsys)
    assert code == 0, summary
    assert summary["skipped"] == len(done_before)
    assert summary["ok"] == len(images) - len(done_before)
    files = sorted(p.relative_to(out / "masks").as_posix() for p in (out / "masks").rglob("*"))
    assert files == [p.name for p in images]  # one mask per input, nothing else
    assert not [p for p in out.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    expected = expected_masks(ckpt, images, tta=True)
    for p in images:
        np.testing.assert_array_equal(
            np.asarray(Image.open(out / "masks" / p.name)), expected[p.name]
        )
    rows = read_manifest(summary["manifest"])
    assert sorted(r["relative_path"] for r in rows) == [p.name for p in images]
