"""jobs/evaluate.py --rand-error-class: the adapted Rand error of every image (the Parquet
report), their mean (the summary, the MLflow run and the model version), against
`adapted_rand_error(segment_labels(truth), segment_labels(prediction))` computed here on
`unet_core.predict.predict`'s masks; a class the class map lacks is refused before any work."""

from __future__ import annotations

import math

import pyarrow.parquet as pq
import pytest

from jobs import evaluate
from tests.integration.inference.helpers import (
    expected_masks,
    make_checkpoint,
    register_checkpoint,
    run_main,
)
from unet_core.classes import ClassMap
from unet_core.data import read_mask
from unet_core.metrics import adapted_rand_error, segment_labels

pytestmark = pytest.mark.integration


def test_evaluate_reports_the_mean_per_image_rand_error(
    tmp_path, ray_local, mlflow_uri, synthetic_root, capsys
):
    import mlflow

    class_map = ClassMap.from_file(synthetic_root / "classes.json")
    ellipse = class_map.names.index("ellipse")
    # random weights: speckled predictions, so splits and merges both occur
    ckpt = make_checkpoint(tmp_path / "unet.pt", class_map, base_width=8, depth=2, seed=0)
    version = register_checkpoint(ckpt, tmp_path / "art", name="speckle")
    report_path = tmp_path / "report.parquet"
    code, summary = run_main(
        evaluate.main,
        [
            "--model",
            "models:/speckle@champion",
            "--data",
            synthetic_root,
            "--rand-error-class",
            "ellipse",
            "--report",
            report_path,
            "--log-to-mlflow",
        ],
        capsys,
    )
    assert code == 0, summary

    images = sorted((synthetic_root / "images").glob("*.png"))
    predicted = expected_masks(ckpt, images)
    expected = {}
    for p in images:
        truth = read_mask(synthetic_root / "masks" / p.name, class_map)
        expected[p.stem] = adapted_rand_error(
            segment_labels(truth, ellipse), segment_labels(predicted[p.name], ellipse)
        )
    assert all(math.isfinite(v) for e in expected.values() for v in e)
    assert len({e[0] for e in expected.values()}) > 1  # the images differ
    assert any(e[1] < 1 for e in expected.values()) and any(e[2] < 1 for e in expected.values())

    rows = {r["key"]: r for r in pq.read_table(report_path).to_pylist()}
    assert rows.keys() == expected.keys()
    for key, (error, precision, recall) in expected.items():
        got = (rows[key]["rand_error"], rows[key]["rand_precision"], rows[key]["rand_recall"])
        assert got == pytest.approx((error, precision, recall)), key

    n = len(expected)
    means = [sum(e[i] for e in expected.values()) / n for i in range(3)]
    assert summary["adapted_rand_class"] == "ellipse" and summary["adapted_rand_images"] == n
    assert summary["adapted_rand_error"] == pytest.approx(means[0])
    assert summary["adapted_rand_precision"] == pytest.approx(means[1])
    assert summary["adapted_rand_recall"] == pytest.approx(means[2])
    assert summary["pixel_error"] is not None  # the pixel figures are there as before

    run = mlflow.get_run(summary["mlflow_run_id"])
    for key in ("adapted_rand_error", "adapted_rand_precision", "adapted_rand_recall"):
        assert run.data.metrics[key] == pytest.approx(summary[key]), key
    assert run.data.params["rand_error_class"] == "ellipse"
    tags = mlflow.MlflowClient().get_model_version("speckle", version).tags
    assert float(tags["eval_adapted_rand_error"]) == pytest.approx(summary["adapted_rand_error"])


def test_without_the_flag_nothing_is_computed(tmp_path, ray_local, synthetic_root, capsys):
    class_map = ClassMap.from_file(synthetic_root / "classes.json")
    ckpt = make_checkpoint(tmp_path / "unet.pt", class_map, base_width=4, depth=2)
    report_path = tmp_path / "report.parquet"
    code, summary = run_main(
        evaluate.main, ["--model", ckpt, "--data", synthetic_root, "--report", report_path], capsys
    )
    assert code == 0, summary
    assert not [k for k in summary if k.startswith("adapted_rand")]
    table = pq.read_table(report_path)
    assert table["rand_error"].null_count == table.num_rows == summary["ok"]


def test_a_class_the_class_map_lacks_exits_2_naming_the_classes(
    tmp_path, ray_local, synthetic_root, capsys
):
    class_map = ClassMap.from_file(synthetic_root / "classes.json")
    ckpt = make_checkpoint(tmp_path / "unet.pt", class_map, base_width=4, depth=2)
    report_path = tmp_path / "report.parquet"
    code, summary = run_main(
        evaluate.main,
        [
            "--model",
            ckpt,
            "--data",
            synthetic_root,
            "--rand-error-class",
            "cell",
            "--report",
            report_path,
        ],
        capsys,
    )
    assert code == 2
    assert "--rand-error-class 'cell'" in summary["error"]
    assert ", ".join(class_map.names) in summary["error"]  # background, ellipse, rectangle
    assert not report_path.exists() and list(tmp_path.iterdir()) == [tmp_path / "unet.pt"]
