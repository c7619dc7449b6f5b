"""The data contract: pairing by key, splits by hash, image and mask decoding."""

import io
import warnings

import numpy as np
import pytest
from PIL import Image

from unet_core.classes import ClassMap, MaskValueError
from unet_core.config import IGNORE_INDEX
from unet_core.data import (
    ImageDecodeError,
    Pair,
    PairingError,
    decode_image,
    decode_mask,
    load_class_map,
    local_lister,
    pair_images_and_masks,
    read_image,
    read_mask,
    split_pairs,
)


def _encode(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _png(arr: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    img = Image.fromarray(arr)
    return _encode(img.convert(mode) if mode else img, fmt)


def _touch(root, rel):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_png(np.zeros((4, 4), np.uint8)))


def _tree(root, images, masks):
    for rel in images:
        _touch(root, f"images/{rel}")
    for rel in masks:
        _touch(root, f"masks/{rel}")


RGB = np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)


# --- pairing -----------------------------------------------------------------------------
def test_pairs_nested_folders_by_relative_path_and_stem(tmp_path):
    _tree(
        tmp_path,
        ["a.png", "sub/b.JPG", "sub/deep/c.TIFF", "d.Jpeg", "e.bmp"],
        ["a.png", "sub/b.png", "sub/deep/c.PNG", "d.png", "e.tif"],
    )
    pairs = pair_images_and_masks(tmp_path)
    assert [p.key for p in pairs] == ["a", "d", "e", "sub/b", "sub/deep/c"]
    assert pairs[3] == Pair("images/sub/b.JPG", "masks/sub/b.png", "sub/b")
    assert pairs[4].image == "images/sub/deep/c.TIFF" and pairs[4].mask == "masks/sub/deep/c.PNG"


def test_hidden_and_non_image_files_are_ignored(tmp_path):
    _tree(tmp_path, ["a.png", ".b.png", ".cache/c.png"], ["a.png", ".DS_Store", "._a.png"])
    (tmp_path / "images" / "notes.txt").write_text("x")
    (tmp_path / "images" / "README").write_text("x")
    (tmp_path / "masks" / "classes.json").write_text("{}")
    assert [p.key for p in pair_images_and_masks(tmp_path)] == ["a"]


def test_a_custom_lister_pairs_by_name_not_order():
    listing = {"images": ["z.jpg", "x/y.png", "a.png"], "masks": ["a.png", "z.png", "x/y.png"]}
    pairs = pair_images_and_masks("s3://bucket/data", lister=lambda folder: listing[folder])
    assert [(p.image, p.mask) for p in pairs] == [
        ("images/a.png", "masks/a.png"),
        ("images/x/y.png", "masks/x/y.png"),
        ("images/z.jpg", "masks/z.png"),
    ]


def test_local_lister_is_recursive_posix_and_empty_for_missing_folders(tmp_path):
    _tree(tmp_path, ["a.png", "s/t/b.png"], [])
    lister = local_lister(tmp_path)
    assert lister("images") == ["a.png", "s/t/b.png"]
    assert lister("masks") == []
    assert lister("nope") == []


def test_an_image_without_a_mask_is_named(tmp_path):
    _tree(tmp_path, ["a.png", "sub/b.png"], ["a.png"])
    with pytest.raises(PairingError) as err:
        pair_images_and_masks(tmp_path)
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path}: images and masks do not pair one to one")
    assert "1 image has no mask: images/sub/b.png" in msg
    assert "no image:" not in msg
    assert "images/a/b.jpg <-> masks/a/b.png" in msg  # the fix


def test_a_mask_without_an_image_is_named(tmp_path):
    _tree(tmp_path, ["a.png"], ["a.png", "z.png", "y.png"])
    with pytest.raises(PairingError, match=r"2 masks have no image: masks/y\.png, masks/z\.png"):
        pair_images_and_masks(tmp_path)


def test_long_lists_show_ten_files_and_a_count(tmp_path):
    _tree(tmp_path, [f"img_{i:02d}.png" for i in range(25)], ["img_00.png"])
    with pytest.raises(PairingError) as err:
        pair_images_and_masks(tmp_path)
    msg = str(err.value)
    assert "24 images have no mask: images/img_01.png" in msg
    assert "images/img_10.png ... and 14 more" in msg
    assert "img_11.png" not in msg


@pytest.mark.parametrize("folder", ["images", "masks"])
def test_two_files_with_one_stem_are_an_error(tmp_path, folder):
    _tree(tmp_path, ["a.png", "b.png"], ["a.png", "b.png"])
    _touch(tmp_path, f"{folder}/a.jpg")
    with pytest.raises(PairingError) as err:
        pair_images_and_masks(tmp_path)
    assert f"1 key has more than one file ({folder}/a.jpg and {folder}/a.png)" in str(err.value)
    assert "keep one file per stem" in str(err.value)


def test_missing_or_empty_folders(tmp_path):
    with pytest.raises(PairingError, match=r"images/ is missing or holds no image files"):
        pair_images_and_masks(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.txt").write_text("x")
    with pytest.raises(PairingError) as err:
        pair_images_and_masks(tmp_path)
    assert "1 file with other extensions: images/a.txt" in str(err.value)
    assert "images/ and masks/" in str(err.value)  # the fix
    _touch(tmp_path, "images/a.png")
    with pytest.raises(PairingError, match=r"masks/ is missing or holds no image files"):
        pair_images_and_masks(tmp_path)


# --- splitting ---------------------------------------------------------------------------
def _pairs(keys):
    return [Pair(f"images/{k}.png", f"masks/{k}.png", str(k)) for k in keys]


def test_split_is_deterministic_disjoint_and_complete():
    pairs = _pairs(range(200))
    train, val = split_pairs(pairs, val_fraction=0.2, seed=1)
    assert (train, val) == split_pairs(list(reversed(pairs)), val_fraction=0.2, seed=1)
    assert 20 < len(val) < 60
    assert not {p.key for p in train} & {p.key for p in val}
    assert {p.key for p in train} | {p.key for p in val} == {p.key for p in pairs}
    assert split_pairs(pairs, val_fraction=0.2, seed=2)[1] != val


def test_split_is_stable_when_the_folder_grows():
    train, val = split_pairs(_pairs(range(200)), val_fraction=0.2, seed=1)
    train2, val2 = split_pairs(_pairs(range(400)), val_fraction=0.2, seed=1)
    assert {p.key for p in val} <= {p.key for p in val2}
    assert {p.key for p in train} <= {p.key for p in train2}


def test_split_never_leaves_a_side_empty():
    for n in (2, 3, 5):
        train, val = split_pairs(_pairs(range(n)), val_fraction=0.01)
        assert len(val) >= 1 and len(train) >= 1
        train, val = split_pairs(_pairs(range(n)), val_fraction=0.99)
        assert len(val) >= 1 and len(train) >= 1
    assert split_pairs(_pairs([1]), val_fraction=0.01) == (_pairs([1]), [])
    assert split_pairs(_pairs(range(5)), val_fraction=0.0) == (_pairs(range(5)), [])
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\)"):
        split_pairs(_pairs(range(5)), val_fraction=1.0)


# --- images ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("RGBA", "PNG"), ("CMYK", "JPEG"), ("P", "PNG"), ("L", "PNG"), ("LA", "PNG"), ("1", "PNG")]
    + [("RGB", "JPEG"), ("RGB", "BMP"), ("RGB", "TIFF"), ("YCbCr", "JPEG")],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_decode_image_modes(mode, fmt, channels):
    out = decode_image(_png(RGB, mode, fmt), channels=channels)
    assert out.shape == (9, 7, channels) and out.dtype == np.uint8


def test_rgba_drops_alpha_and_rgb_to_gray_is_luminance():
    rgba = np.dstack([RGB, np.full(RGB.shape[:2], 10, np.uint8)])
    np.testing.assert_array_equal(decode_image(_png(rgba), channels=3), RGB)
    gray = decode_image(_png(RGB), channels=1)[:, :, 0]
    np.testing.assert_array_equal(gray, np.asarray(Image.fromarray(RGB).convert("L")))


def test_gray_to_rgb_replicates():
    gray = RGB[:, :, 0]
    out = decode_image(_png(gray), channels=3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)


def test_cmyk_jpeg_becomes_rgb_close_to_the_original():
    flat = np.full((16, 16, 3), (200, 40, 90), np.uint8)
    out = decode_image(_png(flat, "CMYK", "JPEG"), channels=3)
    assert np.abs(out.astype(int) - flat).max() < 12


def test_palette_with_transparency_decodes_to_its_colours_without_warnings():
    img = Image.frombytes("P", (2, 2), bytes([0, 1, 2, 3]))
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9])
    data = _encode(img, transparency=bytes([0, 255, 255, 255]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = decode_image(data, channels=3)
    np.testing.assert_array_equal(
        out.reshape(4, 3), [[255, 0, 0], [0, 255, 0], [0, 0, 255], [9] * 3]
    )


def test_sixteen_bit_png_scales_by_257():
    arr = np.array([[0, 65535], [32896, 257]], dtype=np.uint16)
    out = decode_image(_png(arr), channels=1)[:, :, 0]
    np.testing.assert_array_equal(out, [[0, 255], [128, 1]])
    rgb = decode_image(_png(arr), channels=3)
    assert rgb.shape == (2, 2, 3) and (rgb[:, :, 0] == out).all()
    big_endian = _png(arr.astype(">u2"), fmt="TIFF")
    np.testing.assert_array_equal(decode_image(big_endian, channels=1)[:, :, 0], out)


def test_int32_and_float_images_use_their_range():
    eight = np.array([[0, 200]], dtype=np.int32)
    np.testing.assert_array_equal(
        decode_image(_png(eight, fmt="TIFF"), channels=1)[..., 0], [[0, 200]]
    )
    sixteen = np.array([[0, 65535]], dtype=np.int32)
    np.testing.assert_array_equal(
        decode_image(_png(sixteen, fmt="TIFF"), channels=1)[..., 0], [[0, 255]]
    )
    wide = np.array([[-100, 0, 300]], dtype=np.int32)  # outside 0..65535: min..max stretch
    np.testing.assert_array_equal(
        decode_image(_png(wide, fmt="TIFF"), channels=1)[..., 0], [[0, 64, 255]]
    )
    unit = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    np.testing.assert_array_equal(
        decode_image(_png(unit, fmt="TIFF"), channels=1)[..., 0], [[0, 128, 255]]
    )


def _truncated_png() -> bytes:
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = _png(noise)
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", r"bad\.png: empty file \(0 bytes\)"),
        (
            b"this is a text file, not an image\n",
            r"bad\.png: cannot decode image \(not a recognised",
        ),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, r"bad\.png: cannot decode image"),
        (_png(np.zeros((64, 64, 3), np.uint8))[:60], r"bad\.png: cannot decode image"),
        (_truncated_png(), r"bad\.png: cannot decode image.*truncated"),
    ],
    ids=["zero-bytes", "text", "corrupt-header", "cut-header", "truncated-data"],
)
def test_bad_image_bytes_name_the_source(data, message):
    with pytest.raises(ImageDecodeError, match=message):
        decode_image(data, channels=3, source="bad.png")


def test_decompression_bombs_fail_clearly(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    with pytest.raises(ImageDecodeError, match=r"big\.png: image is too large.*MAX_IMAGE_PIXELS"):
        decode_image(_png(np.zeros((10, 10), np.uint8)), channels=1, source="big.png")


def test_decode_image_rejects_other_channel_counts():
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        decode_image(_png(RGB), channels=4)


# --- masks -------------------------------------------------------------------------------
CAMVID_LIKE = ClassMap.from_names(["a", "b", "c"], ignore_values=(11,))


def test_palette_mask_is_read_as_indices_not_colours():
    idx = np.array([[0, 1], [2, 11]], dtype=np.uint8)
    img = Image.frombytes("P", (2, 2), idx.tobytes())
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [9, 9, 9] * 253)
    out = decode_mask(_encode(img), CAMVID_LIKE)
    np.testing.assert_array_equal(out, [[0, 1], [2, IGNORE_INDEX]])
    assert out.dtype == np.uint8


def test_grayscale_mask_values_and_ignore():
    isbi = ClassMap.binary(("membrane", "cell"), (0, 255))
    out = decode_mask(_png(np.array([[0, 255], [255, 0]], np.uint8)), isbi)
    np.testing.assert_array_equal(out, [[0, 1], [1, 0]])
    out = decode_mask(_png(np.array([[0, 11]], np.uint8)), CAMVID_LIKE)
    np.testing.assert_array_equal(out, [[0, IGNORE_INDEX]])


def test_sixteen_bit_masks():
    cm = ClassMap.from_names(["bg", "a", "b"], values=[0, 300, 40000], ignore_values=[65535])
    values = np.array([[0, 300], [40000, 65535]], dtype=np.uint16)
    np.testing.assert_array_equal(decode_mask(_png(values), cm), [[0, 1], [2, IGNORE_INDEX]])
    as_int32 = _png(values.astype(np.int32), fmt="TIFF")  # Pillow mode I
    np.testing.assert_array_equal(decode_mask(as_int32, cm), [[0, 1], [2, IGNORE_INDEX]])


def test_equal_channel_rgb_and_rgba_masks_are_one_channel():
    cm = ClassMap.binary()
    grey = np.repeat(np.array([[0, 255]], np.uint8)[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(decode_mask(_png(grey), cm), [[0, 1]])
    rgba = np.dstack([grey, np.array([[255, 0]], np.uint8)])
    np.testing.assert_array_equal(decode_mask(_png(rgba), cm), [[0, 1]])


def test_colour_masks_are_rejected_naming_the_colours():
    colour = np.zeros((2, 2, 3), np.uint8)
    colour[0, 0] = (255, 0, 0)
    with pytest.raises(MaskValueError, match=r"m\.png: colour \(RGB\) mask .*\(255, 0, 0\)"):
        decode_mask(_png(colour), ClassMap.binary(), source="m.png")


def test_unknown_mask_values_name_the_file_and_values():
    with pytest.raises(MaskValueError) as err:
        decode_mask(_png(np.array([[0, 7, 9]], np.uint8)), ClassMap.binary(), source="masks/m.png")
    msg = str(err.value)
    assert msg.startswith("masks/m.png: mask values [7, 9]")
    assert "add them to 'classes' or 'ignore_values'" in msg


def test_jpeg_masks_get_a_hint():
    noisy = np.random.default_rng(0).choice([0, 255], (32, 32)).astype(np.uint8)
    with pytest.raises(MaskValueError, match="save masks as PNG"):
        decode_mask(_png(noisy, fmt="JPEG"), ClassMap.binary(), source="m.jpg")


def test_one_bit_and_gray_alpha_masks():
    bits = np.array([[0, 255]], np.uint8)
    np.testing.assert_array_equal(decode_mask(_png(bits, "1"), ClassMap.binary()), [[0, 1]])
    la = np.dstack([bits, np.full_like(bits, 255)])
    np.testing.assert_array_equal(decode_mask(_png(la), ClassMap.binary()), [[0, 1]])


def test_corrupt_mask_names_the_source():
    with pytest.raises(ImageDecodeError, match=r"m\.png: cannot decode mask"):
        decode_mask(b"not a png", ClassMap.binary(), source="m.png")


# --- files -------------------------------------------------------------------------------
def test_read_helpers_name_the_path(tmp_path):
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(ImageDecodeError, match=r"x\.png: empty file"):
        read_image(tmp_path / "x.png", channels=3)
    (tmp_path / "m.png").write_bytes(_png(np.array([[0, 3]], np.uint8)))
    with pytest.raises(MaskValueError, match=r"m\.png: mask values \[3\]"):
        read_mask(tmp_path / "m.png", ClassMap.binary())


def test_load_class_map_from_root_or_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no classes.json at the data root.*--class-map"):
        load_class_map(tmp_path)
    ClassMap.binary().save(tmp_path / "classes.json")
    assert load_class_map(tmp_path).num_classes == 2
    other = tmp_path / "elsewhere.json"
    ClassMap.from_names(["a", "b", "c"]).save(other)
    assert load_class_map(tmp_path, other).num_classes == 3
