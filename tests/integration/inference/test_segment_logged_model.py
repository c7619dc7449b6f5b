"""jobs/segment.py and jobs/evaluate.py take MLflow 3 logged-model URIs (``models:/m-<id>``)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from jobs import evaluate, segment
from jobs.segmenting.manifest import read_manifest
from tests.integration.inference.helpers import expected_masks, run_main

pytestmark = pytest.mark.integration


def _model_id(version: str) -> str:
    """The logged model behind a registered version of `unet` (its models:/m-... source)."""
    from mlflow import MlflowClient

    source = MlflowClient().get_model_version("unet", version).source
    assert source.startswith("models:/m-"), source
    return source.removeprefix("models:/")


def test_segment_and_evaluate_take_a_logged_model_uri(
    tmp_path, ray_local, registered, synthetic_root, capsys
):
    ckpt, version = registered
    model_id = _model_id(version)
    images = sorted((synthetic_root / "images").glob("*.png"))[:4]
    listing = tmp_path / "inputs.txt"
    listing.write_text("\n".join(p.name for p in images) + "\n")
    out = tmp_path / "out"
    argv = ["--input", synthetic_root / "images", "--input-list", listing, "--output", out]
    code, summary = run_main(segment.main, [*argv, "--model", f"models:/{model_id}"], capsys)
    assert code == 0 and summary["ok"] == len(images), summary
    assert (summary["model_uri"], summary["model_id"]) == (f"models:/{model_id}", model_id)
    assert (summary["model_name"], summary["model_version"]) == ("unet", version)
    expected = expected_masks(ckpt, images)
    for p in images:
        np.testing.assert_array_equal(
            np.asarray(Image.open(out / "masks" / p.name)), expected[p.name]
        )
    rows = read_manifest(summary["manifest"])
    assert {(r["model_uri"], r["model_name"], r["model_version"]) for r in rows} == {
        (f"models:/{model_id}", "unet", version)
    }

    # The same weights named by the alias: the masks are this model's, so all are skipped.
    code, again = run_main(segment.main, [*argv, "--model", "models:/unet@champion"], capsys)
    assert code == 0, again
    assert (again["skipped"], again["ok"], again["model_uri"]) == (
        len(images),
        0,
        f"models:/unet/{version}",
    )
    assert again["model_id"] == model_id

    # evaluate: a logged model on the labelled set, with its version recorded.
    code, report = run_main(
        evaluate.main, ["--data", synthetic_root, "--model", f"models:/{model_id}"], capsys
    )
    assert code == 0 and report["ok"] > 0, report
    assert (report["model_uri"], report["model_version"]) == (f"models:/{model_id}", version)


def test_a_logged_model_uri_that_names_nothing_fails_before_any_work(
    tmp_path, ray_local, registered, synthetic_root, capsys
):
    out = tmp_path / "out"
    argv = ["--input", synthetic_root / "images", "--output", out, "--model"]
    code, summary = run_main(segment.main, [*argv, "models:/m-00000000000000000000"], capsys)
    assert code != 0
    assert "no logged model with id 'm-00000000000000000000'" in summary["error"], summary
    code, summary = run_main(segment.main, [*argv, "models:/unet"], capsys)
    assert code != 0
    assert "pass models:/unet@ALIAS or models:/unet/VERSION" in summary["error"], summary
    assert not (out / "masks").exists()
