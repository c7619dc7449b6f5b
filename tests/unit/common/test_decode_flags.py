"""--exif-transpose / --max-image-pixels: one definition shared by the training and inference
configs, reaching the decode stage, the training data checks and the training decode."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from jobs.common.decode_flags import DecodeFlags
from jobs.common.pairs import read_pairs
from jobs.inference.config import EvaluateConfig, SegmentConfig, parse_config
from jobs.inference.decode import decode_images, estimate_image_bytes
from jobs.training.config import TrainJobConfig, parse_args
from jobs.training.data_checks import check_pair, gather_training_data
from unet_core.classes import ClassMap
from unet_core.data import DecodeOptions, Pair

pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")

BINARY = {"classes": [{"name": "background", "value": 0}, {"name": "object", "value": 255}]}


def _jpeg(h: int, w: int, orientation: int | None = None) -> bytes:
    yy, xx = np.mgrid[0:h, 0:w]
    pixels = np.stack([xx * 5, yy * 7, xx + yy], axis=2).astype(np.uint8)
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", exif=exif, quality=95)
    return buffer.getvalue()


def _segment(*flags: str) -> SegmentConfig:
    return parse_config(
        SegmentConfig, ["--input", "in", "--output", "out", *flags], prog="segment", description=""
    )


def test_both_configs_take_the_same_flags_into_one_decode_option():
    for cls in (SegmentConfig, EvaluateConfig, TrainJobConfig):
        assert issubclass(cls, DecodeFlags)
    assert _segment().decode_options == DecodeOptions()
    assert parse_args([]).decode_options == DecodeOptions()
    flags = ["--no-exif-transpose", "--max-image-pixels", "500000000"]
    want = DecodeOptions(exif_transpose=False, max_image_pixels=500_000_000)
    assert _segment(*flags).decode_options == want
    train = parse_args(flags)
    assert train.decode_options == want
    assert train.to_flat()["exif_transpose"] is False  # logged with the run's params
    assert train.to_flat()["max_image_pixels"] == 500_000_000


def test_a_bad_limit_is_refused_naming_the_flag(capsys):
    for run in (
        lambda: _segment("--max-image-pixels", "0"),
        lambda: parse_args(["--max-image-pixels", "-5"]),
    ):
        with pytest.raises(SystemExit) as info:
            run()
        assert info.value.code == 2
        assert "--max-image-pixels must be >= 1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--max-image-pixels must be >= 1"):
        TrainJobConfig(max_image_pixels=0)


def test_decode_stage_records_the_orientation_and_fails_one_large_image(tmp_path):
    (tmp_path / "side.jpg").write_bytes(_jpeg(16, 24, orientation=6))
    (tmp_path / "plain.jpg").write_bytes(_jpeg(16, 24))
    (tmp_path / "big.jpg").write_bytes(_jpeg(40, 40))
    inputs = [str(tmp_path / n) for n in ("side.jpg", "plain.jpg", "big.jpg", "gone.jpg")]
    batch = pa.table({"input": inputs})
    rows = decode_images(batch, channels=3, decode=DecodeOptions(max_image_pixels=1000)).to_pylist()
    assert [(r["height"], r["width"], r["exif_orientation"]) for r in rows[:2]] == [
        (24, 16, 6),
        (16, 24, 1),
    ]
    assert rows[0]["error"] is None and rows[1]["error"] is None
    assert "big.jpg" in rows[2]["error"] and "--max-image-pixels 1000" in rows[2]["error"]
    assert rows[2]["exif_orientation"] is None and rows[3]["exif_orientation"] is None
    raw = decode_images(batch.slice(0, 1), channels=3, decode=DecodeOptions(exif_transpose=False))
    assert raw.select(["height", "width", "exif_orientation"]).to_pylist() == [
        {"height": 16, "width": 24, "exif_orientation": 1}
    ]
    # Sizing reads the header of any image, whatever the limit.
    assert estimate_image_bytes([inputs[2]], channels=3) == 40 * 40 * 3


def _write_pair(root: Path, stem: str, *, image: bytes, mask_hw: tuple[int, int]) -> Path:
    """images/<stem>.jpg and masks/<stem>.png (half object) under a root with classes.json."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    (root / "images" / f"{stem}.jpg").write_bytes(image)
    mask = np.zeros(mask_hw, np.uint8)
    mask[: mask_hw[0] // 2] = 255
    Image.fromarray(mask).save(root / "masks" / f"{stem}.png")
    (root / "classes.json").write_text(json.dumps(BINARY))
    return root


def _batch(root: Path, stem: str) -> dict[str, np.ndarray]:
    uris = {"key": stem, "image": f"{root}/images/{stem}.jpg", "mask": f"{root}/masks/{stem}.png"}
    return {k: np.array([v]) for k, v in uris.items()}


def test_training_checks_and_decode_see_the_displayed_image(tmp_path):
    # A photo stored 16x24 (h x w), shown turned: 24x16; its mask was drawn on what is shown.
    root = _write_pair(tmp_path, "a", image=_jpeg(16, 24, orientation=8), mask_hw=(24, 16))
    pair, cmap = Pair(image="images/a.jpg", mask="masks/a.png", key="a"), ClassMap.binary()
    check = check_pair(str(root), pair, cmap)
    assert (check.problem, check.height, check.width) == ("", 24, 16)
    raw = DecodeOptions(exif_transpose=False)
    check = check_pair(str(root), pair, cmap, decode=raw)
    assert check.kind == "size" and "a.png: mask is 16x24 but its image" in check.problem
    rows, errors = read_pairs(_batch(root, "a"), ClassMap.binary(), channels=3)
    assert not errors
    assert rows["image"][0].shape == (24, 16, 3) and rows["mask"][0].shape == (24, 16)
    _, errors = read_pairs(_batch(root, "a"), ClassMap.binary(), channels=3, decode=raw)
    assert (
        f"a.png: mask is 16x24 but its image {root}/images/a.jpg is 24x16"
        in errors[f"{root}/images/a.jpg"]
    )


def test_an_image_above_the_limit_is_a_bad_pair_not_a_failed_check(tmp_path, caplog):
    for i in range(1, 5):
        _write_pair(tmp_path, f"c{i}", image=_jpeg(20, 20), mask_hw=(20, 20))
    _write_pair(tmp_path, "c0", image=_jpeg(40, 40), mask_hw=(40, 40))
    limit = DecodeOptions(max_image_pixels=1000)
    data, _ = gather_training_data(str(tmp_path), val_fraction=0.3, seed=0, decode=limit)
    assert data.decode == limit  # what the training datasets decode with
    assert "1 image(s) above the pixel limit" in caplog.text and "c0.jpg" in caplog.text
    rows, errors = read_pairs(_batch(tmp_path, "c0"), ClassMap.binary(), channels=3, decode=limit)
    assert rows["key"] == [] and "--max-image-pixels 1000" in errors[f"{tmp_path}/images/c0.jpg"]
    # Without the limit the same set is fine and the pair decodes.
    data, _ = gather_training_data(str(tmp_path), val_fraction=0.3, seed=0)
    rows, errors = read_pairs(_batch(tmp_path, "c0"), ClassMap.binary(), channels=3)
    assert not errors and rows["image"][0].shape == (40, 40, 3)


def test_the_block_size_estimate_counts_the_bytes_of_wide_pixels(tmp_path):
    import tifffile

    sixteen = tmp_path / "wide.png"
    Image.fromarray(np.full((30, 20), 4000, dtype=np.uint16)).save(sixteen)
    floats = tmp_path / "float.tif"
    tifffile.imwrite(floats, np.zeros((30, 20), dtype=np.float32))
    assert estimate_image_bytes([str(sixteen)], channels=1) == 600  # decoded to 8 bits
    assert estimate_image_bytes([str(sixteen)], channels=1, pixel_values="native") == 1200
    assert estimate_image_bytes([str(floats)], channels=1, pixel_values="native") == 2400
