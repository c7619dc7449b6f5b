"""Images the right way up: segment and evaluate apply the EXIF orientation (masks line up
with the image as every viewer shows it), --no-exif-transpose keeps the stored pixels, and
--max-image-pixels fails exactly the images above it."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image, ImageOps

from jobs import evaluate, segment
from jobs.segmenting.manifest import read_manifest
from tests.integration.inference.helpers import constant_checkpoint, make_checkpoint, run_main
from unet_core.checkpoint import load_checkpoint
from unet_core.classes import ClassMap
from unet_core.data import decode_image
from unet_core.predict import predict, prepare_for_inference

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
]

STORED = {"side6.jpg": 6, "side8.jpg": 8, "flip3.jpg": 3, "plain.jpg": None, "big.png": None}
"""Inputs and their EXIF orientation tags (None: no tag). All are stored 30 x 44 (h x w) but
big.png (60 x 80: above --max-image-pixels 3000)."""


def _picture(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = np.stack([xx * 5, yy * 8, (xx + yy) * 3], axis=2) % 256
    return (smooth + rng.integers(0, 24, (h, w, 3))).astype(np.uint8)


def _save(path, pixels: np.ndarray, orientation: int | None) -> None:
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    fmt = "PNG" if path.suffix == ".png" else "JPEG"
    Image.fromarray(pixels).save(
        path, format=fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {})
    )


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    for i, (name, orientation) in enumerate(STORED.items()):
        size = (60, 80) if name == "big.png" else (30, 44)
        _save(root / name, _picture(*size, seed=i), orientation)
    return root


def _displayed(path) -> tuple[int, int]:
    """(height, width) as a viewer shows the file."""
    with Image.open(path) as img:
        shown = ImageOps.exif_transpose(img)
        return shown.height, shown.width


def _mask(out, name: str):
    return out / "masks" / (name.rsplit(".", 1)[0] + ".png")


def _run(tmp_path, capsys, photos, ckpt, name, *flags):
    out = tmp_path / name
    code, summary = run_main(
        segment.main, ["--input", photos, "--output", out, "--model", ckpt, *flags], capsys
    )
    rows = {r["relative_path"]: r for r in read_manifest(summary["manifest"])}
    return code, summary, rows, out


def test_segment_writes_masks_the_way_the_images_are_shown(tmp_path, ray_local, photos, capsys):
    ckpt = make_checkpoint(tmp_path / "unet.pt", ClassMap.binary(), base_width=4, depth=2)
    code, summary, rows, out = _run(
        tmp_path, capsys, photos, ckpt, "shown", "--max-image-pixels", 3000, "--batch-size", 2
    )
    # big.png alone fails, naming itself and the flag; the others are written.
    assert code == 1 and (summary["ok"], summary["failed"]) == (4, 1), summary
    big = rows["big.png"]
    assert big["status"] == "failed" and big["output"] is None
    assert "big.png" in big["error"] and "--max-image-pixels 3000" in big["error"], big["error"]
    assert big["exif_orientation"] is None

    loaded = load_checkpoint(ckpt)
    model = prepare_for_inference(loaded.model, "cpu")
    for name, tag in STORED.items():
        if name == "big.png":
            continue
        row = rows[name]
        mask = np.asarray(Image.open(_mask(out, name)))
        h, w = _displayed(photos / name)
        assert (h, w) == ((44, 30) if tag in (6, 8) else (30, 44))
        assert mask.shape == (h, w), name  # the displayed size
        assert (row["status"], row["height"], row["width"]) == ("ok", h, w), row
        assert row["exif_orientation"] == (tag or 1), row
        image = decode_image((photos / name).read_bytes(), channels=3)  # turned, as shown
        want = predict(model, image, preprocess=loaded.preprocess).mask
        np.testing.assert_array_equal(mask, want, err_msg=name)

    # --no-exif-transpose keeps the stored pixels (and the staged path carries the column);
    # Pillow's own limit lets big.png through.
    code, summary, rows, out = _run(
        tmp_path, capsys, photos, ckpt, "raw", "--no-exif-transpose", "--no-fused"
    )
    assert code == 0 and summary["ok"] == 5, summary
    for name in STORED:
        with Image.open(photos / name) as img:
            stored = (img.height, img.width)
        mask = np.asarray(Image.open(_mask(out, name)))
        assert mask.shape == stored, name
        assert rows[name]["exif_orientation"] == 1 and rows[name]["status"] == "ok"
    # Those raw masks are not "done" for a run that turns the images: it refuses, naming them.
    code, summary = run_main(
        segment.main, ["--input", photos, "--output", out, "--model", ckpt], capsys
    )
    assert code == 2 and "exif_transpose=0" in summary["error"], summary


def test_evaluate_pairs_turned_images_with_masks_drawn_on_them(tmp_path, ray_local, capsys):
    root = tmp_path / "labelled"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.json").write_text(
        json.dumps({"classes": [{"name": "bg", "value": 0}, {"name": "fg", "value": 255}]})
    )
    _save(root / "images" / "a.jpg", _picture(30, 44, seed=0), 6)  # shown 44 x 30
    truth = np.zeros((44, 30), np.uint8)
    truth[:11] = 255  # a quarter of what is shown
    buffer = io.BytesIO()
    Image.fromarray(truth).save(buffer, format="PNG")
    (root / "masks" / "a.png").write_bytes(buffer.getvalue())
    ckpt = constant_checkpoint(tmp_path / "fg.pt", ClassMap.binary(), predict_class=1)
    code, report = run_main(evaluate.main, ["--model", ckpt, "--data", root], capsys)
    assert code == 0 and (report["ok"], report["failed"]) == (1, 0), report
    assert report["pixels"] == 44 * 30
    assert report["pixel_accuracy"] == pytest.approx(0.25)
    code, report = run_main(
        evaluate.main, ["--model", ckpt, "--data", root, "--no-exif-transpose"], capsys
    )
    assert report["failed"] == 1 and "a.png: mask is 30x44" in report["failed_inputs"][0]["error"]
