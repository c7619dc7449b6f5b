"""jobs/evaluate.py against answers computed by hand (constant-prediction models); its Parquet
report (local and S3) against its summary."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs import evaluate
from tests.integration.inference.helpers import constant_checkpoint, register_checkpoint, run_main
from unet_core.classes import ClassMap
from unet_core.data import read_mask

pytestmark = pytest.mark.integration


def test_evaluate_constant_model_on_synthetic(
    tmp_path, ray_local, mlflow_uri, synthetic_root, capsys
):
    import mlflow

    class_map = ClassMap.from_file(synthetic_root / "classes.json")
    ckpt = constant_checkpoint(tmp_path / "unet.pt", class_map, predict_class=1)
    version = register_checkpoint(ckpt, tmp_path / "art", name="const", alias="champion")
    code, report = run_main(
        evaluate.main,
        [
            "--model",
            "models:/const@champion",
            "--data",
            synthetic_root,
            "--log-to-mlflow",
            "--scores-file",
            tmp_path / "eval" / "report.parquet",
        ],
        capsys,
    )
    assert code == 0, report

    truths = {
        p.stem: read_mask(p, class_map) for p in sorted((synthetic_root / "masks").glob("*.png"))
    }
    counts = sum(np.bincount(t.reshape(-1), minlength=3) for t in truths.values())
    n = counts.sum()
    # Everything predicted as class 1: IoU_1 = n_1 / n, the other present classes score 0.
    assert report["per_class"]["ellipse"]["iou"] == pytest.approx(counts[1] / n)
    assert report["per_class"]["ellipse"]["dice"] == pytest.approx(2 * counts[1] / (n + counts[1]))
    assert report["per_class"]["background"]["iou"] == 0.0
    assert report["per_class"]["rectangle"]["iou"] == 0.0
    assert report["mean_iou"] == pytest.approx(counts[1] / n / 3)
    assert report["pixel_accuracy"] == pytest.approx(counts[1] / n)
    assert report["pixel_error"] == pytest.approx(1 - counts[1] / n)
    assert report["model_uri"] == f"models:/const/{version}"
    assert (report["ok"], report["failed"], report["failed_inputs"]) == (len(truths), 0, [])
    assert "images" not in report  # the summary has no per-image list: that is the report

    # --scores-file: one row per image, whose figures add up to the summary's.
    assert report["scores_file"] == str(tmp_path / "eval" / "report.parquet")
    rows = pq.read_table(report["scores_file"]).flatten().to_pandas().set_index("key")
    assert sorted(rows.index) == sorted(truths) and set(rows["status"]) == {"ok"}
    assert [p.name for p in (tmp_path / "eval").iterdir()] == ["report.parquet"]  # no temp file
    for stem, truth in truths.items():
        row = rows.loc[stem]
        assert row["pixels"] == truth.size and row["support.ellipse"] == (truth == 1).sum()
        assert row["pixel_accuracy"] == pytest.approx((truth == 1).mean())
        assert row["iou.ellipse"] == pytest.approx((truth == 1).mean())
    assert rows["pixels"].sum() == report["pixels"] == n
    for name, figures in report["per_class"].items():
        assert rows[f"support.{name}"].sum() == figures["support"]
    matrices = np.stack(rows["confusion"].to_numpy()).reshape(-1, 3, 3)
    assert matrices.sum(axis=0).tolist() == report["confusion_matrix"]

    # --log-to-mlflow: a run with the figures, linked to the model version both ways.
    mv = mlflow.MlflowClient().get_model_version("const", version)
    assert float(mv.tags["eval_mean_iou"]) == pytest.approx(report["mean_iou"])
    run = mlflow.get_run(mv.tags["eval_run_id"])
    assert run.data.metrics["pixel_error"] == pytest.approx(report["pixel_error"])
    assert run.data.tags["model_version"] == version
    assert report["mlflow_run_id"] == run.info.run_id
    # ... with the summary and the Parquet report as artifacts.
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert artifacts == {"evaluation.json", "report.parquet"}
    logged = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/evaluation.json")
    assert logged["mean_iou"] == report["mean_iou"] and "images" not in logged


def test_evaluate_external_class_map_and_a_bad_pair(tmp_path, ray_local, capsys):
    """An ISBI-like root (0 = membrane, 255 = cell) with the class map outside the root."""
    rng = np.random.default_rng(0)
    root = tmp_path / "isbi"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    truths = {}
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (40, 48), dtype=np.uint8)).save(
            root / f"images/s{i}.png"
        )
        mask = np.where(rng.random((40, 48)) < 0.3, 0, 255).astype(np.uint8)
        Image.fromarray(mask).save(root / f"masks/s{i}.png")
        truths[f"s{i}"] = mask
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "images/wrong.png")
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(root / "masks/wrong.png")  # size mismatch
    external = tmp_path / "elsewhere" / "isbi_classes.json"
    external.parent.mkdir()
    external.write_text(
        json.dumps({"classes": [{"name": "membrane", "value": 0}, {"name": "cell", "value": 255}]})
    )
    ckpt = constant_checkpoint(tmp_path / "unet.pt", ClassMap.binary(), predict_class=1)
    code, report = run_main(
        evaluate.main, ["--model", ckpt, "--data", root, "--class-map", external], capsys
    )
    assert code == 1  # one pair failed and --max-failed-fraction is 0
    assert report["failed"] == 1 and "wrong" in report["failed_inputs"][0]["input"]
    assert "9" in report["failed_inputs"][0]["error"]  # names the sizes
    cells = sum(int((t == 255).sum()) for t in truths.values())
    total = sum(t.size for t in truths.values())
    assert report["pixel_accuracy"] == pytest.approx(cells / total)
    assert report["pixel_error"] == pytest.approx(1 - cells / total)
    assert set(report["per_class"]) == {"membrane", "cell"}
    assert report["per_class"]["membrane"]["iou"] == 0.0
    assert report["mean_iou"] == pytest.approx(cells / total / 2)


def test_evaluate_caps_failures_and_writes_the_report_to_s3(
    tmp_path, ray_local, s3_endpoint, s3_bucket, capsys
):
    """12 unreadable images out of 15: all counted, 10 listed (smallest keys first), every one
    a row of the report, which lands on S3 as one object."""
    import boto3

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    good = np.zeros((16, 16), np.uint8)
    for i in range(3):
        Image.fromarray(good).save(root / f"images/good{i}.png")
        Image.fromarray(good).save(root / f"masks/good{i}.png")
    bad = [f"bad{i:02d}" for i in range(12)]
    for stem in bad:
        (root / f"images/{stem}.png").write_bytes(b"not a PNG")
        Image.fromarray(good).save(root / f"masks/{stem}.png")
    ckpt = constant_checkpoint(tmp_path / "unet.pt", ClassMap.binary(), predict_class=0)
    uri = f"s3://{s3_bucket}/eval/run1/report.parquet"
    code, summary = run_main(
        evaluate.main,
        ["--model", ckpt, "--data", root, "--scores-file", uri, "--s3-endpoint-url", s3_endpoint],
        capsys,
    )
    assert code == 1, summary  # failures over --max-failed-fraction 0
    assert (summary["total"], summary["ok"], summary["failed"]) == (15, 3, 12)
    assert [f["input"] for f in summary["failed_inputs"]] == bad[:10]
    assert all("bad" in f["error"] for f in summary["failed_inputs"])
    assert summary["pixel_accuracy"] == 1.0 and summary["scores_file"] == uri

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    listed = client.list_objects_v2(Bucket=s3_bucket, Prefix="eval/")
    assert [o["Key"] for o in listed["Contents"]] == ["eval/run1/report.parquet"]
    body = client.get_object(Bucket=s3_bucket, Key="eval/run1/report.parquet")["Body"].read()
    table = pq.read_table(io.BytesIO(body))
    rows = {r["key"]: r for r in table.to_pylist()}
    assert sorted(rows) == sorted([*bad, "good0", "good1", "good2"])
    assert {k for k, r in rows.items() if r["status"] == "failed"} == set(bad)
    assert all(rows[k]["error"] and rows[k]["pixels"] is None for k in bad)
    assert rows["good0"]["iou"] == {"background": 1.0, "foreground": None}  # absent class: null
    assert table.schema.field("support").type.names == ["background", "foreground"]


def test_evaluate_refuses_a_json_report(tmp_path, capsys):
    """The per-image report is Parquet; a .json name is refused before anything starts."""
    code = evaluate.main(["--data", str(tmp_path), "--scores-file", str(tmp_path / "report.json")])
    out, err = capsys.readouterr()
    assert code == 2 and json.loads(out.splitlines()[-1])["kind"] == "usage"
    assert "ending in .parquet" in err
