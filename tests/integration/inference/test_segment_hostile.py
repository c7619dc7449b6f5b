"""jobs/segment.py on a hostile folder: broken files become manifest rows, the rest masks."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from jobs import segment
from jobs.inference.manifest import read_manifest
from tests.integration.inference.helpers import make_checkpoint, run_main
from unet_core.checkpoint import load_checkpoint
from unet_core.classes import ClassMap
from unet_core.data import decode_image
from unet_core.predict import predict, prepare_for_inference

pytestmark = pytest.mark.integration

BAD = ("corrupt.png", "truncated.jpg", "empty.png", "text.png")


def _png(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def _noise(rng: np.random.Generator, h: int, w: int, c: int = 3) -> np.ndarray:
    return rng.integers(0, 256, size=(h, w, c), dtype=np.uint8)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(_noise(rng, 40, 56))
    good = _png(rgb)
    files = {
        "corrupt.png": good[:60] + bytes(rng.integers(0, 256, 400, dtype=np.uint8)),
        "empty.png": b"",
        "text.png": b"this is a text file, not a PNG\n",
        "rgba.png": _png(Image.fromarray(_noise(rng, 33, 47, 4), "RGBA")),
        "gray16.png": _png(Image.fromarray(rng.integers(0, 65536, (30, 50), dtype=np.uint16))),
        "palette.png": _png(Image.fromarray(_noise(rng, 36, 36)).quantize(colors=16)),
        "one_pixel.png": _png(Image.fromarray(_noise(rng, 1, 1))),
        "nested/dir/plain.BMP": None,
        "scan.TIF": None,
        "cmyk.jpg": None,
        "truncated.jpg": None,
        "big.png": _png(Image.fromarray(_noise(rng, 500, 700))),  # > --tile-size 256: tiles
        "huge.jpg": None,  # 3000 x 2000
        "notes.txt": b"ignored: not an image extension",
    }
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if data is not None:
            path.write_bytes(data)
    Image.fromarray(_noise(rng, 24, 31)).save(root / "nested/dir/plain.BMP", format="BMP")
    Image.fromarray(_noise(rng, 45, 29)).save(root / "scan.TIF", format="TIFF")
    Image.fromarray(_noise(rng, 32, 48, 4), "RGBA").convert("CMYK").save(root / "cmyk.jpg", "JPEG")
    buffer = io.BytesIO()
    Image.fromarray(_noise(rng, 64, 64)).save(buffer, format="JPEG", quality=90)
    (root / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    # Smooth content so JPEG stays small; the size is what matters.
    yy, xx = np.mgrid[0:2000, 0:3000]
    huge = np.stack([(xx // 12) % 256, (yy // 8) % 256, ((xx + yy) // 20) % 256], axis=2)
    Image.fromarray(huge.astype(np.uint8)).save(root / "huge.jpg", quality=80)
    return root


def test_hostile_folder(tmp_path, ray_local, hostile, capsys):
    class_map = ClassMap.binary()
    ckpt = make_checkpoint(tmp_path / "unet.pt", class_map, base_width=4, depth=2)
    out = tmp_path / "out"
    args = [
        "--input",
        hostile,
        "--output",
        out,
        "--model",
        ckpt,
        "--tile-size",
        256,
        "--tile-overlap",
        32,
        "--batch-size",
        4,
    ]
    code, summary = run_main(segment.main, args, capsys)
    good = sorted(
        p.relative_to(hostile).as_posix()
        for p in hostile.rglob("*")
        if p.is_file() and p.suffix.lower() != ".txt" and p.name not in BAD
    )
    total = len(good) + len(BAD)
    assert (summary["total"], summary["ok"], summary["failed"]) == (total, len(good), len(BAD))
    assert code == 1  # default --max-failed-fraction 0: any failure shows in the exit code

    rows = {r["relative_path"]: r for r in read_manifest(summary["manifest"])}
    assert len(rows) == total
    for name in BAD:
        assert rows[name]["status"] == "failed" and rows[name]["output"] is None
        assert name in rows[name]["error"], rows[name]["error"]
    assert "empty" in rows["empty.png"]["error"]

    loaded = load_checkpoint(ckpt)
    model = prepare_for_inference(loaded.model, "cpu")
    for rel in good:
        mask_path = out / "masks" / (rel.rsplit(".", 1)[0] + ".png")
        mask = np.asarray(Image.open(mask_path))
        with Image.open(hostile / rel) as src:
            size = src.size
        assert mask.shape == (size[1], size[0]), rel  # input size, never resized
        assert rows[rel]["status"] == "ok" and (rows[rel]["width"], rows[rel]["height"]) == size
        if rel == "huge.jpg":
            continue  # predicting it again here would double the test's time
        image = decode_image((hostile / rel).read_bytes(), channels=3, source=rel)
        want = predict(model, image, preprocess=loaded.preprocess, tile_size=256, tile_overlap=32)
        np.testing.assert_array_equal(mask, want.mask, err_msg=rel)
    assert not list(out.rglob("*.tmp"))

    # A rerun skips the good ones, retries the bad ones; a tolerant threshold exits 0.
    code, again = run_main(segment.main, [*args, "--max-failed-fraction", "0.5"], capsys)
    assert code == 0, again
    assert (again["skipped"], again["failed"], again["ok"]) == (len(good), len(BAD), 0)
