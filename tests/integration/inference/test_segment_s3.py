"""jobs/segment.py with input and output on a local S3 server (moto), checked with boto3."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs import segment
from tests.conftest import upload_tree
from tests.integration.inference.helpers import (
    expected_masks,
    make_checkpoint,
    register_checkpoint,
    run_main,
)
from unet_core.classes import ClassMap

pytestmark = pytest.mark.integration


def _keys(client, bucket: str, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def test_segment_s3_in_s3_out(
    tmp_path, ray_local, mlflow_uri, s3_endpoint, s3_bucket, synthetic_root, capsys
):
    import boto3

    class_map = ClassMap.from_file(synthetic_root / "classes.json")
    ckpt = make_checkpoint(tmp_path / "unet.pt", class_map)
    version = register_checkpoint(ckpt, tmp_path / "art")
    images = sorted((synthetic_root / "images").glob("*.png"))
    # Nested keys and an upper-case extension: listing is recursive and case-insensitive.
    local = tmp_path / "upload"
    for i, p in enumerate(images):
        dest = (
            local / ("sub/deeper" if i % 2 else "") / (p.stem + (".PNG" if i % 3 == 0 else ".png"))
        )
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(p.read_bytes())
    (local / "notes.txt").write_text("not an image: ignored by the listing")
    source = upload_tree(local, s3_bucket, "raw/images", s3_endpoint)
    rels = sorted(
        p.relative_to(local).as_posix()
        for p in local.rglob("*")
        if p.is_file() and p.suffix != ".txt"
    )

    out = f"s3://{s3_bucket}/results/run1"
    code, summary = run_main(
        segment.main,
        [
            "--input",
            source,
            "--output",
            out,
            "--model",
            "models:/unet@champion",
            "--s3-endpoint-url",
            s3_endpoint,
            "--batch-size",
            4,
            "--confidence",
        ],
        capsys,
    )
    assert code == 0, summary
    n = len(images)
    assert (summary["total"], summary["ok"], summary["failed"]) == (n, n, 0)
    assert summary["model_uri"] == f"models:/unet/{version}"
    assert summary["manifest"] == f"{out}/manifest.parquet"

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    mask_keys = _keys(client, s3_bucket, "results/run1/masks/")
    want = sorted(f"results/run1/masks/{r.rsplit('.', 1)[0]}.png" for r in rels)
    assert mask_keys == want
    assert len(_keys(client, s3_bucket, "results/run1/confidence/")) == n
    expected = expected_masks(ckpt, images)
    for key in mask_keys:
        body = client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
        got = np.asarray(Image.open(io.BytesIO(body)))
        np.testing.assert_array_equal(got, expected[key.rsplit("/", 1)[1]], err_msg=key)

    body = client.get_object(Bucket=s3_bucket, Key="results/run1/manifest.parquet")["Body"].read()
    rows = pq.read_table(io.BytesIO(body)).to_pylist()
    assert len(rows) == n and {r["status"] for r in rows} == {"ok"}
    assert {r["model_version"] for r in rows} == {version}
    assert {r["input"] for r in rows} == {f"{source}/{r}" for r in rels}
    assert all(r["output"].startswith(f"{out}/masks/") for r in rows)

    # A rerun against the bucket skips everything and writes no mask.
    before = {
        k: client.head_object(Bucket=s3_bucket, Key=k)["ETag"]
        + str(client.head_object(Bucket=s3_bucket, Key=k)["LastModified"])
        for k in mask_keys
    }
    code, again = run_main(
        segment.main,
        ["--input", source, "--output", out, "--model", "models:/unet@champion"],  # env endpoint
        capsys,
    )
    assert code == 0 and (again["skipped"], again["ok"]) == (n, 0), again
    after = {
        k: client.head_object(Bucket=s3_bucket, Key=k)["ETag"]
        + str(client.head_object(Bucket=s3_bucket, Key=k)["LastModified"])
        for k in mask_keys
    }
    assert after == before
