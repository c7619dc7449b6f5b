"""jobs/evaluate.py against answers computed by hand (constant-prediction models)."""

from __future__ import annotations

import json

import numpy as np
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
            "--report",
            tmp_path / "report.json",
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
    assert len(report["images"]) == len(truths) and report["failed"] == 0
    first = report["images"][0]
    truth = truths[first["image"]]
    assert first["pixel_accuracy"] == pytest.approx((truth == 1).mean())
    assert json.loads((tmp_path / "report.json").read_text())["mean_iou"] == report["mean_iou"]

    # --log-to-mlflow: a run with the figures, linked to the model version both ways.
    mv = mlflow.MlflowClient().get_model_version("const", version)
    assert float(mv.tags["eval_mean_iou"]) == pytest.approx(report["mean_iou"])
    run = mlflow.get_run(mv.tags["eval_run_id"])
    assert run.data.metrics["pixel_error"] == pytest.approx(report["pixel_error"])
    assert run.data.tags["model_version"] == version
    assert report["mlflow_run_id"] == run.info.run_id


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
    assert report["failed"] == 1 and "wrong" in report["failures"][0]["image"]
    assert "9" in report["failures"][0]["error"]  # names the sizes
    cells = sum(int((t == 255).sum()) for t in truths.values())
    total = sum(t.size for t in truths.values())
    assert report["pixel_accuracy"] == pytest.approx(cells / total)
    assert report["pixel_error"] == pytest.approx(1 - cells / total)
    assert set(report["per_class"]) == {"membrane", "cell"}
    assert report["per_class"]["membrane"]["iou"] == 0.0
    assert report["mean_iou"] == pytest.approx(cells / total / 2)
    assert sorted(r["image"] for r in report["images"]) == sorted(truths)
