"""jobs/segment.py on the synthetic set: local Ray, sqlite MLflow registry, local folders."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from jobs import segment
from jobs.segmenting.manifest import read_manifest
from tests.integration.inference.helpers import (
    assert_throughput,
    expected_masks,
    make_checkpoint,
    run_main,
)
from unet_core.classes import ClassMap

pytestmark = pytest.mark.integration


def test_segment_alias_masks_match_predict_and_manifest(
    tmp_path, ray_local, registered, synthetic_root, capsys
):
    ckpt, version = registered
    images = sorted((synthetic_root / "images").glob("*.png"))
    out = tmp_path / "out"
    code, summary = run_main(
        segment.main,
        [
            "--input",
            synthetic_root / "images",
            "--output",
            out,
            "--model",
            "models:/unet@champion",
            "--batch-size",
            4,
            "--overlays",
            "--confidence",
            "--progress-seconds",
            0,
        ],
        capsys,
    )
    assert code == 0, summary
    n = len(images)
    assert (summary["total"], summary["ok"], summary["failed"], summary["skipped"]) == (n, n, 0, 0)
    assert summary["model_uri"] == f"models:/unet/{version}"
    assert_throughput(summary, processed=n)  # all n inputs went through the pipeline

    # N masks with the same relative paths, equal to unet_core.predict.predict exactly.
    masks = sorted(p.relative_to(out / "masks").as_posix() for p in (out / "masks").rglob("*"))
    assert masks == [p.name for p in images]
    expected = expected_masks(ckpt, images)
    for p in images:
        got = np.asarray(Image.open(out / "masks" / p.name))
        assert got.dtype == np.uint8 and got.shape == expected[p.name].shape
        np.testing.assert_array_equal(got, expected[p.name], err_msg=p.name)
    assert len(list((out / "overlays").glob("*.jpg"))) == n
    assert len(list((out / "confidence").glob("*.png"))) == n

    rows = read_manifest(summary["manifest"])
    assert len(rows) == n
    assert {r["status"] for r in rows} == {"ok"}
    assert {(r["model_name"], r["model_version"]) for r in rows} == {("unet", version)}
    row = next(r for r in rows if r["relative_path"] == images[0].name)
    assert (row["width"], row["height"]) == expected[images[0].name].shape[::-1]
    fractions = row["class_fractions"]
    assert set(fractions) == {"background", "ellipse", "rectangle"}
    assert sum(fractions.values()) == pytest.approx(1.0)
    expected_bg = float((expected[images[0].name] == 0).mean())
    assert fractions["background"] == pytest.approx(expected_bg)
    assert 0 < row["mean_confidence"] <= 1 and row["seconds"] > 0


def test_segment_and_evaluate_with_dihedral_tta(
    tmp_path, ray_local, synthetic_root, capsys, mlflow_uri
):
    """--tta dihedral: the masks unet_core.predict gives with tta="dihedral", recorded in the
    manifest's settings; a run with another mode does not count them as done."""
    from jobs import evaluate

    class_map = ClassMap.from_file(synthetic_root / "classes.json")
    ckpt = make_checkpoint(tmp_path / "unet.pt", class_map)
    images = sorted((synthetic_root / "images").glob("*.png"))[:3]
    listing = tmp_path / "in.txt"
    listing.write_text("\n".join(p.name for p in images))
    out = tmp_path / "out"
    args = ["--input", synthetic_root / "images", "--input-list", listing, "--output", out]
    code, summary = run_main(segment.main, [*args, "--model", ckpt, "--tta", "dihedral"], capsys)
    assert code == 0 and summary["ok"] == 3, summary
    dihedral = expected_masks(ckpt, images, tta="dihedral")
    plain = expected_masks(ckpt, images)
    assert any((dihedral[k] != plain[k]).any() for k in dihedral)  # the mode changes masks
    for p in images:
        got = np.asarray(Image.open(out / "masks" / p.name))
        np.testing.assert_array_equal(got, dihedral[p.name], err_msg=p.name)
    assert {r["settings"].split()[1] for r in read_manifest(summary["manifest"])} == {
        "tta=dihedral"
    }
    code, summary = run_main(segment.main, [*args, "--model", ckpt, "--tta", "flip"], capsys)
    assert code == 2 and "tta=dihedral" in summary["error"], summary

    code, plain_report = run_main(
        evaluate.main, ["--model", ckpt, "--data", synthetic_root], capsys
    )
    assert code == 0, plain_report
    code, report = run_main(
        evaluate.main, ["--model", ckpt, "--data", synthetic_root, "--tta", "dihedral"], capsys
    )
    assert code == 0 and report["ok"] == plain_report["ok"], report
    assert report["mean_iou"] != plain_report["mean_iou"]
    code, refused = run_main(segment.main, [*args, "--model", ckpt, "--tta", "rot90"], capsys)
    assert code == 2 and refused["kind"] == "usage"
    assert "--tta must be one of none, hflip, flip, dihedral" in refused["error"]


def test_segment_mask_formats_and_jsonl(tmp_path, ray_local, registered, synthetic_root, capsys):
    ckpt, version = registered
    images = sorted((synthetic_root / "images").glob("*.png"))[:3]
    class_map = ClassMap.from_file(synthetic_root / "classes.json")
    expected = expected_masks(ckpt, images)
    listing = tmp_path / "inputs.txt"
    listing.write_text("# three of them\n" + "\n".join(p.name for p in images) + "\n")
    for fmt in ("values", "color"):
        out = tmp_path / fmt
        code, summary = run_main(
            segment.main,
            [
                "--input",
                synthetic_root / "images",
                "--input-list",
                listing,
                "--output",
                out,
                "--model",
                f"models:/unet/{version}",
                "--mask-format",
                fmt,
                "--manifest-format",
                "jsonl",
            ],
            capsys,
        )
        assert code == 0 and summary["ok"] == 3, summary
        assert_throughput(summary, processed=3)
        assert summary["manifest"].endswith("manifest.jsonl")
        assert len(read_manifest(summary["manifest"])) == 3
        for p in images:
            img = Image.open(out / "masks" / p.name)
            if fmt == "values":
                assert img.mode == "L"
                want = np.asarray(class_map.values, dtype=np.uint8)[expected[p.name]]
                np.testing.assert_array_equal(np.asarray(img), want)
            else:
                assert img.mode == "P"  # palette PNG: pixels are indices, shown in colours
                np.testing.assert_array_equal(np.asarray(img), expected[p.name])
                palette = np.asarray(img.getpalette()[: 3 * 3], dtype=np.uint8).reshape(3, 3)
                np.testing.assert_array_equal(palette, class_map.colors)


def test_segment_local_checkpoint_and_bad_model(
    tmp_path, ray_local, synthetic_root, capsys, mlflow_uri
):
    class_map = ClassMap.from_file(synthetic_root / "classes.json")
    make_checkpoint(tmp_path / "model" / "unet.pt", class_map)
    images = sorted((synthetic_root / "images").glob("*.png"))[:2]
    listing = tmp_path / "in.txt"
    listing.write_text("\n".join(str(p) for p in images))  # absolute paths under --input
    code, summary = run_main(
        segment.main,
        [
            "--input",
            synthetic_root / "images",
            "--input-list",
            listing,
            "--output",
            tmp_path / "o",
            "--model",
            tmp_path / "model",
        ],  # a folder holding unet.pt
        capsys,
    )
    assert code == 0 and summary["ok"] == 2 and summary["model_version"] is None
    assert summary["model_uri"] == str(tmp_path / "model")
    # An alias nobody set: exit 2, and the message says what to do.
    code, summary = run_main(
        segment.main,
        [
            "--input",
            synthetic_root / "images",
            "--output",
            tmp_path / "o2",
            "--model",
            "models:/nothing@champion",
        ],
        capsys,
    )
    assert code == 2 and "alias" in summary["error"] and "--model" in summary["error"]
    assert not (tmp_path / "o2").exists()
