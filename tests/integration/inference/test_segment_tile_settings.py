"""CPU and GPU runs share an output: the tile size (512 by default on CPU actors, 1024 on GPU
ones) blocks a rerun only for the images it tiled. Half a folder is segmented with the CPU
default, then the whole folder with the GPU default (on this CPU, the explicit value)."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs import segment
from jobs.segmenting.layout import MANIFEST_DIR, output_settings
from jobs.segmenting.manifest import latest_rows
from tests.integration.inference.helpers import expected_masks, make_checkpoint, run_main, tree
from unet_core.classes import ClassMap

pytestmark = pytest.mark.integration

SMALL = {f"small{i}.png": (48 + 8 * i, 64) for i in range(6)}
LARGE = {"large0.png": (600, 600), "large1.png": (300, 560)}
"""Images by name and (height, width): the large ones are tiled at 512, not at 1024."""
CPU_TILES = output_settings(mask_format="indices", tta="none", tile_size=512, tile_overlap=64)


def _folder(root):
    rng = np.random.default_rng(0)
    for name, (h, w) in {**SMALL, **LARGE}.items():
        # Smooth content with noise: a small model's logits vary across the image, so tile
        # borders show in the mask.
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(xx * 3) % 256, (yy * 2) % 256, ((xx + yy) * 5) % 256], axis=2)
        noise = rng.integers(0, 64, size=(h, w, 3))
        Image.fromarray(((base + noise) % 256).astype(np.uint8)).save(root / name)
    return sorted(root.glob("*.png"))


def _masks(out, names):
    return {n: np.asarray(Image.open(out / "masks" / n)) for n in names}


def _as_older_release(out):
    """Rewrite the manifest files of ``out`` as a release before per-image tiling wrote them:
    every row with the run's settings string."""
    for path in (out / MANIFEST_DIR).glob("*.parquet"):
        table = pq.read_table(path)
        at = table.schema.get_field_index("settings")
        old = pc.if_else(pc.is_valid(table["settings"]), CPU_TILES, table["settings"])
        pq.write_table(table.set_column(at, "settings", old), path)


def test_cpu_then_gpu_tile_default_share_an_output(tmp_path, ray_local, synthetic_root, capsys):
    source = tmp_path / "images"
    source.mkdir()
    images = _folder(source)
    names = [p.name for p in images]
    ckpt = make_checkpoint(
        tmp_path / "unet.pt", ClassMap.from_file(synthetic_root / "classes.json")
    )
    tiled_512 = expected_masks(ckpt, [source / n for n in LARGE], tile_size=512)
    whole = expected_masks(ckpt, images, tile_size=1024)
    for n in LARGE:  # the tile size changes these masks: a rerun must not keep them
        assert (tiled_512[n] != whole[n]).any(), n
    half = ["small0.png", "small1.png", "small2.png", "large0.png"]
    listing = tmp_path / "half.txt"
    listing.write_text("\n".join(half) + "\n")
    out = tmp_path / "out"

    def run(*extra, output=out):
        args = ["--input", source, "--output", output, "--model", ckpt, "--batch-size", 4,
                "--write-batch-size", 4, *extra]  # fmt: skip
        return run_main(segment.main, args, capsys)

    # Half the folder with the CPU tile default: the rows record the tiling each image got.
    code, first = run("--input-list", listing, "--tile-size", 512)
    assert code == 0 and first["ok"] == 4, first
    recorded = {r["relative_path"]: r["settings"] for r in latest_rows(str(out)).to_pylist()}
    assert recorded == {
        **{n: f"{CPU_TILES} tiled=0" for n in half[:3]},
        "large0.png": CPU_TILES,
    }
    older = tmp_path / "older"  # the same output, as an earlier release recorded it
    shutil.copytree(out, older)
    _as_older_release(older)

    # The whole folder with the GPU default: the small done images are skipped, the large one
    # tiled at 512 is refused as other settings, and nothing is written.
    before = tree(out / "masks")
    code, dry = run("--tile-size", 1024, "--dry-run")
    assert code == 2 and (dry["inputs"], dry["skipped"], dry["to_process"]) == (8, 3, 4), dry
    assert dry["other_versions"] == {f"{ckpt} ({CPU_TILES})": 1}, dry
    code, refused = run("--tile-size", 1024)
    assert code == 2 and "1 inputs already have a mask" in refused["error"], refused
    assert "tile_size=512" in refused["error"] and "--redo-other-versions" in refused["error"]
    assert tree(out / "masks") == before

    # --redo-other-versions: the large image is redone, the rest segmented, the small done
    # ones left as they are; every mask equals a fresh run's.
    code, redo = run("--tile-size", 1024, "--redo-other-versions")
    assert code == 0 and (redo["ok"], redo["skipped"], redo["failed"]) == (5, 3, 0), redo
    assert redo["redone_other_versions"] == {f"{ckpt} ({CPU_TILES})": 1}
    after = tree(out / "masks")
    assert all(after[n] == before[n] for n in half[:3])  # skipped: not rewritten
    fresh = tmp_path / "fresh"
    code, summary = run("--tile-size", 1024, output=fresh)
    assert code == 0 and summary["ok"] == 8, summary
    got, want = _masks(out, names), _masks(fresh, names)
    for n in names:
        np.testing.assert_array_equal(got[n], want[n], err_msg=n)
        np.testing.assert_array_equal(got[n], whole[n], err_msg=n)
    rows = {r["relative_path"]: r["settings"] for r in latest_rows(str(out)).to_pylist()}
    # Nothing tiled at 1024; the small images the first run made keep its rows (skipped).
    assert set(rows.values()) == {
        f"{CPU_TILES} tiled=0",
        "mask_format=indices tta=0 tile_size=1024 overlap=64 tiled=0",
    }
    code, again = run("--tile-size", 1024)
    assert code == 0 and (again["ok"], again["skipped"]) == (0, 8), again

    # An output of an earlier release (each row with the run's settings string): the same
    # settings still skip every image; the GPU default skips the images the tiles never
    # touched (their recorded size says so) and refuses only the tiled one.
    code, same = run("--input-list", listing, "--tile-size", 512, "--dry-run", output=older)
    assert code == 0 and (same["skipped"], same["to_process"]) == (4, 0), same
    code, gpu = run("--tile-size", 1024, "--dry-run", output=older)
    assert code == 2 and (gpu["skipped"], gpu["to_process"]) == (3, 4), gpu
    assert gpu["other_versions"] == {f"{ckpt} ({CPU_TILES})": 1}, gpu
