"""jobs/segment.py on a hostile folder: broken files become manifest rows, the rest masks."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from jobs import segment
from jobs.segmenting.manifest import read_manifest
from tests.integration.inference.helpers import BAD, make_checkpoint, run_main
from unet_core.checkpoint import load_checkpoint
from unet_core.classes import ClassMap
from unet_core.data import decode_image
from unet_core.predict import predict, prepare_for_inference

pytestmark = pytest.mark.integration


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
