import io

import numpy as np
import pytest
from PIL import Image

from unet_core.classes import ClassMap, MaskValueError
from unet_core.config import IGNORE_INDEX
from unet_core.data import (
    ImageDecodeError,
    PairingError,
    decode_image,
    decode_mask,
    load_class_map,
    pair_images_and_masks,
    split_pairs,
)


def _png(arr, mode=None, fmt="PNG"):
    buf = io.BytesIO()
    img = Image.fromarray(arr) if mode is None else Image.fromarray(arr).convert(mode)
    img.save(buf, format=fmt)
    return buf.getvalue()


def _touch(root, rel, arr=None):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_png(arr if arr is not None else np.zeros((4, 4), np.uint8)))


def test_pairs_by_relative_path_and_stem(tmp_path):
    for rel in ["a.png", "sub/b.PNG", "sub/deep/c.jpg"]:
        _touch(tmp_path, f"images/{rel}")
    for rel in ["a.png", "sub/b.png", "sub/deep/c.png"]:
        _touch(tmp_path, f"masks/{rel}")
    (tmp_path / "images" / ".DS_Store").write_text("x")
    (tmp_path / "images" / "notes.txt").write_text("x")
    pairs = pair_images_and_masks(tmp_path)
    assert [p.key for p in pairs] == ["a", "sub/b", "sub/deep/c"]
    assert pairs[2].image == "images/sub/deep/c.jpg" and pairs[2].mask == "masks/sub/deep/c.png"


def test_unpaired_files_are_named(tmp_path):
    _touch(tmp_path, "images/a.png")
    _touch(tmp_path, "images/b.png")
    _touch(tmp_path, "masks/a.png")
    _touch(tmp_path, "masks/z.png")
    with pytest.raises(PairingError) as err:
        pair_images_and_masks(tmp_path)
    assert "images/b.png" in str(err.value) and "masks/z.png" in str(err.value)
    assert "1 images have no mask" in str(err.value)


def test_duplicate_stems_are_an_error(tmp_path):
    _touch(tmp_path, "images/a.png")
    _touch(tmp_path, "images/a.jpg")
    _touch(tmp_path, "masks/a.png")
    with pytest.raises(PairingError, match=r"images/a\.jpg and images/a\.png|images/a\.png and"):
        pair_images_and_masks(tmp_path)


def test_empty_folders(tmp_path):
    with pytest.raises(PairingError, match="no images found"):
        pair_images_and_masks(tmp_path)
    _touch(tmp_path, "images/a.png")
    with pytest.raises(PairingError, match="no masks found"):
        pair_images_and_masks(tmp_path)


def test_split_is_deterministic_and_stable_when_the_set_grows(tmp_path):
    from unet_core.data import Pair

    pairs = [Pair(f"images/{i}.png", f"masks/{i}.png", str(i)) for i in range(200)]
    train, val = split_pairs(pairs, val_fraction=0.2, seed=1)
    assert 20 < len(val) < 60
    assert not {p.key for p in train} & {p.key for p in val}
    assert len(train) + len(val) == 200
    more = pairs + [Pair(f"images/{i}.png", f"masks/{i}.png", str(i)) for i in range(200, 400)]
    train2, val2 = split_pairs(more, val_fraction=0.2, seed=1)
    assert {p.key for p in val} <= {p.key for p in val2}
    assert {p.key for p in train} <= {p.key for p in train2}
    assert split_pairs(pairs[:2], val_fraction=0.01)[1]


@pytest.mark.parametrize(
    ("mode", "channels"),
    [("RGBA", 3), ("CMYK", 3), ("P", 3), ("L", 3), ("RGB", 1), ("LA", 1), ("1", 3)],
)
def test_decode_image_modes(mode, channels):
    rgb = np.random.default_rng(0).integers(0, 255, (9, 7, 3), dtype=np.uint8)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    out = decode_image(_png(rgb, mode, fmt), channels=channels)
    assert out.shape == (9, 7, channels) and out.dtype == np.uint8


def test_decode_sixteen_bit_image_scales_to_eight_bits():
    arr = np.array([[0, 65535], [32896, 257]], dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    out = decode_image(buf.getvalue(), channels=1)[:, :, 0]
    np.testing.assert_array_equal(out, [[0, 255], [128, 1]])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty file"),
        (b"this is a text file, not an image", "cannot decode"),
        (_png(np.zeros((64, 64, 3), np.uint8))[:60], "cannot decode"),
    ],
)
def test_bad_image_bytes_name_the_source(data, message):
    with pytest.raises(ImageDecodeError, match=f"bad.png.*{message}|bad.png: {message}"):
        decode_image(data, channels=3, source="bad.png")


def test_decode_mask_palette_reads_indices():
    idx = np.array([[0, 1], [2, 11]], dtype=np.uint8)
    img = Image.fromarray(idx, mode="L").convert("P")
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [9, 9, 9] * 253)
    buf = io.BytesIO()
    Image.fromarray(idx).convert("L").save(buf, "PNG")
    pal = io.BytesIO()
    p = Image.frombytes("P", (2, 2), idx.tobytes())
    p.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [9, 9, 9] * 253)
    p.save(pal, "PNG")
    cm = ClassMap.from_names(["a", "b", "c"], ignore_values=(11,))
    np.testing.assert_array_equal(decode_mask(pal.getvalue(), cm), [[0, 1], [2, IGNORE_INDEX]])


def test_decode_mask_rejects_colour_masks_and_unknown_values():
    cm = ClassMap.binary()
    colour = np.zeros((2, 2, 3), np.uint8)
    colour[0, 0] = (255, 0, 0)
    with pytest.raises(MaskValueError, match="m.png: colour"):
        decode_mask(_png(colour), cm, source="m.png")
    with pytest.raises(MaskValueError, match=r"m.png: mask values \[7\]"):
        decode_mask(_png(np.full((2, 2), 7, np.uint8)), cm, source="m.png")
    grey_rgb = np.repeat(np.array([[0, 255]], np.uint8)[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(decode_mask(_png(grey_rgb), cm), [[0, 1]])


def test_load_class_map_needs_a_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="--class-map"):
        load_class_map(tmp_path)
    (tmp_path / "classes.json").write_text(ClassMap.binary().to_json())
    assert load_class_map(tmp_path).num_classes == 2
