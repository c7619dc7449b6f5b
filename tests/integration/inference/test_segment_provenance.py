"""Reruns that know which model made each mask, and jobs that share an output: the segment job
on a local Ray with a sqlite registry (and a moto S3 endpoint for the concurrent case)."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs import segment
from jobs.common import fs
from jobs.inference.config import SegmentConfig
from jobs.segmenting import leases
from jobs.segmenting.job import run_segmentation
from jobs.segmenting.layout import MANIFEST_DIR
from jobs.segmenting.manifest import latest_rows, read_manifest
from tests.conftest import upload_tree
from tests.integration.inference.helpers import expected_masks, run_main, tree

pytestmark = pytest.mark.integration


def _args(source, out, model, *extra):
    return ["--input", source, "--output", out, "--model", model, "--batch-size", 4,
            "--write-batch-size", 4, *extra]  # fmt: skip


def test_rerun_with_another_version_refuses_then_redoes_exactly_those(
    tmp_path, ray_local, registered, synthetic_root, capsys
):
    ckpt_v2, version = registered
    assert version == "2"
    source = tmp_path / "images"
    shutil.copytree(synthetic_root / "images", source)
    images = sorted(source.glob("*.png"))
    n = len(images)
    out = tmp_path / "out"

    # Version 1 segments everything.
    code, first = run_main(segment.main, _args(source, out, "models:/unet/1"), capsys)
    assert code == 0 and first["ok"] == n and first["model_version"] == "1"

    # The alias now points at version 2: the rerun refuses, naming both versions, and writes
    # nothing (the masks and the manifest are those of version 1).
    before = tree(out / "masks")
    code, refused = run_main(segment.main, _args(source, out, "models:/unet@champion"), capsys)
    assert code == 2
    assert f"{n} inputs already have a mask" in refused["error"]
    assert "models:/unet/1" in refused["error"] and "models:/unet/2" in refused["error"]
    assert "--redo-other-versions" in refused["error"] and "--overwrite" in refused["error"]
    assert tree(out / "masks") == before
    assert {r["model_version"] for r in latest_rows(str(out)).to_pylist()} == {"1"}
    # Other output settings count as another maker too (a dry run says so, writing nothing).
    code, dry = run_main(
        segment.main, _args(source, out, "models:/unet/1", "--mask-format", "color", "--dry-run"),
        capsys,
    )  # fmt: skip
    assert code == 2 and dry["other_versions"] and "mask_format=indices" in dry["problems"][0]

    # A new image, and a mask planted for it without a manifest row (a kill between the two):
    # it is not "done", so it is redone with the rest.
    Image.open(images[0]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(source / "new.png")
    (out / "masks" / "new.png").write_bytes(b"planted, no manifest row")

    # --redo-other-versions: exactly version 1's masks (all) and the new one are redone.
    code, redo = run_main(
        segment.main, _args(source, out, "models:/unet@champion", "--redo-other-versions"), capsys
    )
    assert code == 0, redo
    assert (redo["total"], redo["ok"], redo["skipped"], redo["failed"]) == (n + 1, n + 1, 0, 0)
    assert list(redo["redone_other_versions"].values()) == [n]
    assert "models:/unet/1" in next(iter(redo["redone_other_versions"]))
    rows = latest_rows(str(out)).to_pylist()
    assert len(rows) == n + 1 and {r["model_version"] for r in rows} == {"2"}
    assert {r["checkpoint_sha256"] for r in rows} == {redo["checkpoint_sha256"]}
    expected = expected_masks(ckpt_v2, [*images, source / "new.png"])
    for name, mask in expected.items():
        np.testing.assert_array_equal(np.asarray(Image.open(out / "masks" / name)), mask)

    # Same version again: everything skipped.
    code, again = run_main(segment.main, _args(source, out, "models:/unet@champion"), capsys)
    assert code == 0 and (again["ok"], again["skipped"]) == (0, n + 1)

    # An --input-list subset, redone with --overwrite: every earlier input keeps its row in
    # the manifest dataset and in manifest.parquet.
    subset = [p.name for p in images[:3]]
    listing = tmp_path / "subset.txt"
    listing.write_text("\n".join(subset) + "\n")
    code, part = run_main(
        segment.main,
        _args(source, out, "models:/unet@champion", "--input-list", listing, "--overwrite"),
        capsys,
    )
    assert code == 0 and (part["total"], part["ok"]) == (3, 3)
    rows = {r["relative_path"]: r for r in latest_rows(str(out)).to_pylist()}
    assert len(rows) == n + 1
    assert {rel for rel, r in rows.items() if r["job_id"] == part["job_id"]} == set(subset)
    assert {r["job_id"] for rel, r in rows.items() if rel not in subset} == {redo["job_id"]}
    assert len(read_manifest(part["manifest"])) == n + 1 == part["manifest_rows"]
    assert len(list((out / MANIFEST_DIR).glob("*.parquet"))) == 1  # compacted

    # A Parquet input list (a 'path' column, URIs or relative paths) streams the same way.
    pq.write_table(
        pa.table({"path": [str(source / subset[0]), subset[1], "new.png"]}),
        tmp_path / "subset.parquet",
    )
    code, dry = run_main(
        segment.main,
        _args(source, out, "models:/unet@champion", "--input-list", tmp_path / "subset.parquet",
              "--dry-run"),
        capsys,
    )  # fmt: skip
    assert code == 0 and (dry["inputs"], dry["skipped"], dry["to_process"]) == (3, 3, 0), dry
    assert dry["fused"] is True and dry["device"] == "cpu"  # CPU actors: fused path


def _run_together(configs: list[SegmentConfig]) -> list[dict]:
    """Start the jobs at once (threads of this process, one Ray); their summaries."""
    results: list = [None] * len(configs)
    start = threading.Barrier(len(configs))

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = run_segmentation(configs[i])
        except Exception as exc:  # reported below with the job's index
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(configs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=400)
    assert not any(t.is_alive() for t in threads), "a job did not finish"
    failures = [r for r in results if isinstance(r, Exception)]
    assert not failures, failures
    return results


def _plant_live_job(out: str, provenance: str) -> tuple[str, str]:
    """A lease of a live job (this process, fresh heartbeat) with the same model, and a
    temporary file it is writing; returns (its job id, the temporary's path in the fs)."""
    job = "f00dfeed0001"
    filesystem, root = fs.resolve(out)
    now = time.time()
    lease = leases.Lease(job, provenance, "models:/unet/2", "s", socket.gethostname(),
                         os.getpid(), now, now)  # fmt: skip
    path = f"{root}/{leases.LEASES_DIR}/{job}.json"
    fs.write_bytes_atomic(filesystem, path, json.dumps(lease.__dict__).encode())
    tmp = f"{root}/masks/{fs.temp_name('in-flight.png', job)}"
    fs.write_bytes_atomic(filesystem, tmp, b"half a mask")
    return job, tmp


def _provenance(ckpt, cfg: SegmentConfig) -> str:
    from jobs.common.model_source import checkpoint_digest
    from jobs.segmenting.layout import output_settings

    settings = output_settings(mask_format=cfg.mask_format, tta=cfg.tta,
                               tile_size=cfg.tile_for(use_gpu=False),
                               tile_overlap=cfg.tile_overlap)  # fmt: skip
    return f"{checkpoint_digest(ckpt.read_bytes())}|{settings}"


@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_jobs_at_once_on_one_output(
    where, tmp_path, ray_local, registered, synthetic_root, s3_endpoint, s3_bucket
):
    ckpt, _ = registered
    images = sorted((synthetic_root / "images").glob("*.png"))
    if where == "s3":
        source = upload_tree(synthetic_root / "images", s3_bucket, "in", s3_endpoint)
        out = f"s3://{s3_bucket}/out"
    else:
        source, out = str(synthetic_root / "images"), str(tmp_path / "out")
    configs = [
        SegmentConfig(
            input=source,
            output=out,
            model="models:/unet@champion",
            batch_size=4,
            write_batch_size=4,
            s3_endpoint_url=s3_endpoint,
        )  # fmt: skip
        for _ in range(2)
    ]
    planted_job, planted_tmp = _plant_live_job(out, _provenance(ckpt, configs[0]))
    first, second = _run_together(configs)

    # Both finished cleanly and shared the output (each saw the other, or the planted job).
    for summary in (first, second):
        assert summary["failed"] == 0 and summary["total"] == len(images), summary
        assert summary["ok"] + summary["skipped"] == len(images)
        assert planted_job in summary["shared_with"]
    # Every input has exactly one mask and one latest row; the masks are version 2's.
    filesystem, root = fs.resolve(out, endpoint_url=s3_endpoint)
    masks = sorted(r for r in fs.list_files(fs.join(out, "masks"), endpoint_url=s3_endpoint)
                   if not r.split("/")[-1].startswith("."))  # fmt: skip
    assert masks == [p.name for p in images]
    rows = latest_rows(out, endpoint_url=s3_endpoint).to_pylist()
    assert sorted(r["relative_path"] for r in rows) == [p.name for p in images]
    assert {(r["status"], r["model_version"]) for r in rows} == {("ok", "2")}
    expected = expected_masks(ckpt, images)
    for p in images:
        data = fs.read_bytes(fs.join(out, "masks", p.name), endpoint_url=s3_endpoint)
        got = np.asarray(Image.open(io.BytesIO(data)))
        np.testing.assert_array_equal(got, expected[p.name], err_msg=p.name)
    # The live job's temporary is still there: nobody removed another live job's file.
    assert filesystem.get_file_info(planted_tmp).type == pafs.FileType.File
    # Neither job left a lease behind (the planted one is still there, it is "alive").
    held = [lease.job_id for lease in leases.live_leases(out, endpoint_url=s3_endpoint)]
    assert held == [planted_job]


def test_stale_multipart_uploads_under_the_output_are_aborted(s3_endpoint, s3_bucket):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    inside = client.create_multipart_upload(Bucket=s3_bucket, Key="out/masks/a.png")
    outside = client.create_multipart_upload(Bucket=s3_bucket, Key="other/b.png")
    out = f"s3://{s3_bucket}/out"

    def open_uploads() -> set[str]:
        listed = client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])
        return {u["UploadId"] for u in listed}

    # moto stamps every upload "Initiated 2010-11-10": ages are measured from that stamp.
    initiated = client.list_multipart_uploads(Bucket=s3_bucket)["Uploads"][0]["Initiated"]
    age = time.time() - initiated.timestamp()
    # Younger than the bound: kept (it may be another live job's).
    assert leases.abort_stale_uploads(out, max_age_s=age + 86400, endpoint_url=s3_endpoint) == 0
    assert open_uploads() == {inside["UploadId"], outside["UploadId"]}
    assert leases.abort_stale_uploads(out, max_age_s=3600, endpoint_url=s3_endpoint) == 1
    assert open_uploads() == {outside["UploadId"]}  # only under the output's prefix
    assert leases.abort_stale_uploads(str(Path("/tmp")), max_age_s=1, endpoint_url=None) == 0
