"""EXIF orientation and the pixel limit on decode (unet_core.image_files, unet_core.data)."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image, ImageOps

from unet_core.classes import ClassMap
from unet_core.data import (
    DecodeOptions,
    ImageDecodeError,
    ImageTooLargeError,
    decode_image,
    decode_image_oriented,
    decode_mask,
    read_image,
)
from unet_core.image_files import image_header, over_limit

# Pillow warns between the limit and twice it, where the decode then refuses the image.
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")

ORIENTATION = 0x0112
RAW = DecodeOptions(exif_transpose=False)
# Not symmetric under any flip or rotation, and smooth enough that JPEG keeps its layout.
YY, XX = np.mgrid[0:24, 0:40]
PICTURE = np.stack([XX * 6, YY * 10, (XX + 2 * YY) * 3], axis=2).astype(np.uint8)


def _encode(img: Image.Image, fmt: str, orientation: int | None = None) -> bytes:
    exif = Image.Exif()
    if orientation is not None:
        exif[ORIENTATION] = orientation
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _pillow(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_is_decoded_as_exif_transpose_shows_it(orientation):
    data = _encode(Image.fromarray(PICTURE), "JPEG", orientation)
    assert _pillow(data).getexif()[ORIENTATION] == orientation  # the tag is really there
    image, applied = decode_image_oriented(data, channels=3, source="photo.jpg")
    want = np.asarray(ImageOps.exif_transpose(_pillow(data)).convert("RGB"))
    np.testing.assert_array_equal(image, want)
    assert applied == orientation
    turned = orientation in (5, 6, 7, 8)
    assert image.shape == ((40, 24, 3) if turned else (24, 40, 3))
    raw = decode_image(data, channels=3, source="photo.jpg", options=RAW)
    np.testing.assert_array_equal(raw, np.asarray(_pillow(data).convert("RGB")))
    assert raw.shape == (24, 40, 3)
    assert decode_image_oriented(data, channels=3, options=RAW)[1] == 1  # none applied
    if orientation != 1:
        assert not np.array_equal(image, raw) or image.shape != raw.shape


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_tiff_and_grayscale_follow_the_tag_too(orientation):
    data = _encode(Image.fromarray(PICTURE[..., 0]), "TIFF", orientation)
    image = decode_image(data, channels=1)
    want = np.asarray(ImageOps.exif_transpose(_pillow(data)))
    np.testing.assert_array_equal(image[..., 0], want)
    assert image.shape[:2] == want.shape


def test_no_tag_and_invalid_tags_leave_the_pixels():
    for orientation in (None, 0, 9):
        data = _encode(Image.fromarray(PICTURE), "PNG", orientation)
        image, applied = decode_image_oriented(data, channels=3)
        np.testing.assert_array_equal(image, PICTURE)
        assert applied == 1


def test_a_mask_with_an_orientation_is_turned_like_its_image():
    values = np.zeros((24, 40), np.uint8)
    values[:6, :10] = 255  # the top-left corner as stored
    cmap = ClassMap.binary()
    data = _encode(Image.fromarray(values), "PNG", 6)  # stored sideways: shown turned 90 cw
    mask = decode_mask(data, cmap, source="m.png")
    assert mask.shape == (40, 24)
    np.testing.assert_array_equal(mask, np.rot90(values // 255, k=-1))
    assert mask[:10, -6:].all() and mask.sum() == 60  # the corner is now top-right
    np.testing.assert_array_equal(decode_mask(data, cmap, options=RAW), values // 255)


def test_palette_masks_stay_indices_when_turned():
    idx = np.zeros((4, 6), np.uint8)
    idx[0, 0], idx[3, 5] = 1, 2
    img = Image.frombytes("P", (6, 4), idx.tobytes())
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [9, 9, 9] * 253)
    cmap = ClassMap.from_names(["a", "b", "c"])
    mask = decode_mask(_encode(img, "PNG", 3), cmap)  # 180 degrees
    np.testing.assert_array_equal(mask, idx[::-1, ::-1])


def test_header_gives_the_displayed_size_without_decoding(tmp_path):
    data = _encode(Image.fromarray(PICTURE), "JPEG", 8)
    assert image_header(data, source="a.jpg") == ("RGB", 40, 24)
    assert image_header(data, source="a.jpg", options=RAW) == ("RGB", 24, 40)
    assert image_header(data[:2048], source="a.jpg") == ("RGB", 40, 24)  # the first bytes do
    (tmp_path / "a.jpg").write_bytes(data)
    assert read_image(tmp_path / "a.jpg", channels=3).shape == (40, 24, 3)
    assert read_image(tmp_path / "a.jpg", channels=3, options=RAW).shape == (24, 40, 3)


# --- the pixel limit ---------------------------------------------------------------------------


def _png(h: int, w: int) -> bytes:
    return _encode(Image.fromarray(np.zeros((h, w), np.uint8)), "PNG")


def test_an_image_above_the_limit_fails_naming_the_file_and_the_flag():
    data = _png(10, 12)  # 120 pixels
    with pytest.raises(ImageTooLargeError) as info:
        decode_image(
            data, channels=1, source="s3://b/big.png", options=DecodeOptions(max_image_pixels=100)
        )
    message = str(info.value)
    assert message.startswith("s3://b/big.png: image is too large")
    assert "12x10 = 120 pixels" in message and "--max-image-pixels 100" in message
    assert isinstance(info.value, ImageDecodeError) and isinstance(info.value, ValueError)
    # Far above it Pillow refuses while opening (above 2 x the limit): the same error.
    with pytest.raises(ImageTooLargeError, match=r"big\.png: image .*120 pixels.*pixels 50\)"):
        decode_image(data, channels=1, source="big.png", options=DecodeOptions(max_image_pixels=50))
    with pytest.raises(ImageTooLargeError, match=r"m\.png: mask is too large"):
        decode_mask(
            data, ClassMap.binary(), source="m.png", options=DecodeOptions(max_image_pixels=100)
        )
    with pytest.raises(ImageTooLargeError, match="--max-image-pixels"):
        image_header(data, source="big.png", options=DecodeOptions(max_image_pixels=119))
    assert decode_image(data, channels=1, options=DecodeOptions(max_image_pixels=120)).shape == (
        10,
        12,
        1,
    )


def test_raising_the_limit_decodes_what_pillow_refuses(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40)  # Pillow refuses above 80 pixels
    data = _png(10, 12)
    with pytest.raises(ImageTooLargeError) as info:
        decode_image(data, channels=1, source="tile.png")
    assert "tile.png" in str(info.value) and "--max-image-pixels" in str(info.value)
    assert "PIL.Image.MAX_IMAGE_PIXELS" in str(info.value)
    assert over_limit(10, 12) and not over_limit(8, 10)
    image = decode_image(
        data, channels=1, source="tile.png", options=DecodeOptions(max_image_pixels=500)
    )
    assert image.shape == (10, 12, 1)
    assert Image.MAX_IMAGE_PIXELS == 40  # set for the call only, then restored
    assert over_limit(10, 12, DecodeOptions(max_image_pixels=119)) and not over_limit(
        10, 12, DecodeOptions(max_image_pixels=120)
    )


def test_the_limit_holds_in_every_thread_and_is_restored():
    data, errors = _png(10, 12), []
    before = Image.MAX_IMAGE_PIXELS

    def decode(limit: int) -> None:
        for _ in range(20):
            try:
                decode_image(
                    data,
                    channels=1,
                    source=f"t{limit}",
                    options=DecodeOptions(max_image_pixels=limit),
                )
                errors.append(None if limit >= 120 else f"{limit} decoded")
            except ImageTooLargeError:
                errors.append(None if limit < 120 else f"{limit} refused")

    threads = [threading.Thread(target=decode, args=(n,)) for n in (100, 1000, 119, 120)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [e for e in errors if e] == [] and len(errors) == 80
    assert before == Image.MAX_IMAGE_PIXELS


def test_the_limit_must_be_positive():
    with pytest.raises(ValueError, match="max_image_pixels must be >= 1"):
        DecodeOptions(max_image_pixels=0)
