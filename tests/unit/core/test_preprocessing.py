"""Images as they come (unet_core.preprocessing): own dtype, any channel count, statistics."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageOps

from unet_core.data import decode_image
from unet_core.image_files import DecodeOptions, ImageDecodeError, ImageTooLargeError
from unet_core.preprocessing import ChannelStats, channel_statistics, read_array

# Pillow warns between the limit and twice it, where the decode then refuses the image.
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
RNG = np.random.default_rng(0)
YY, XX = np.mgrid[0:24, 0:40]


def _tiff(arr: np.ndarray, **kwargs) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, arr, **kwargs)
    return buffer.getvalue()


def _png(img: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", **kwargs)
    return buffer.getvalue()


def test_four_band_uint16_tiff_keeps_every_band_and_value():
    bands = RNG.integers(0, 65536, size=(24, 40, 4), dtype=np.uint16)
    contig = _tiff(bands, photometric="minisblack", planarconfig="contig")  # axes YXS
    out = read_array(contig, source="tile.tif")
    assert out.dtype == np.uint16 and out.shape == (24, 40, 4)
    np.testing.assert_array_equal(out, bands)
    planar = read_array(_tiff(np.moveaxis(bands, 2, 0), photometric="minisblack"), source="p.tif")
    np.testing.assert_array_equal(planar, bands)  # (C, Y, X) on disk, (H, W, C) out


def test_multi_page_tiff_pages_become_channels():
    pages = [RNG.integers(0, 4096, size=(24, 40), dtype=np.uint16) for _ in range(3)]
    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer) as tif:
        for page in pages:
            tif.write(page, photometric="minisblack", metadata=None)
    out = read_array(buffer.getvalue(), source="stack.tif")
    assert out.shape == (24, 40, 3)
    np.testing.assert_array_equal(out, np.stack(pages, axis=2))


def test_float32_tiff_keeps_its_values():
    data = RNG.normal(0.0, 3.0, size=(24, 40)).astype(np.float32)
    out = read_array(_tiff(data), source="f.tif")
    assert out.dtype == np.float32 and out.shape == (24, 40, 1)
    np.testing.assert_array_equal(out[:, :, 0], data)


def test_twelve_bit_png_keeps_every_grey_level():
    data = ((XX * 97 + YY * 13) % 4096).astype(np.uint16)
    png = _png(Image.fromarray(data))
    out = read_array(png, source="cell.png")
    assert out.dtype == np.uint16 and out.shape == (24, 40, 1)
    np.testing.assert_array_equal(out[:, :, 0], data)
    # the legacy path keeps 16 grey levels of these 4096: the reason for this module
    assert len(np.unique(decode_image(png, channels=1))) <= 17


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA", "P", "1"])
def test_eight_bit_images_read_as_decode_image_reads_them(mode):
    picture = np.stack([XX * 6, YY * 10, (XX + 2 * YY) * 3], axis=2).astype(np.uint8)
    img = Image.fromarray(picture).convert(mode)
    out = read_array(_png(img), source="x.png")
    channels = 3 if mode in ("RGB", "RGBA", "P") else 1
    assert out.dtype == np.uint8 and out.shape == (24, 40, channels)
    np.testing.assert_array_equal(out, decode_image(_png(img), channels=channels))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_tiff_orientation_tag_turns_pixels_as_viewers_do(orientation):
    picture = np.stack([XX * 6, YY * 10, (XX + 2 * YY) * 3], axis=2).astype(np.uint8)
    data = _tiff(picture, photometric="rgb", extratags=[(274, "H", 1, orientation, True)])
    pil = Image.open(io.BytesIO(data))
    want = np.asarray(ImageOps.exif_transpose(pil))
    np.testing.assert_array_equal(read_array(data, source="o.tif"), want)
    raw = read_array(data, source="o.tif", options=DecodeOptions(exif_transpose=False))
    np.testing.assert_array_equal(raw, picture)


def test_jpeg_orientation_as_decode_image():
    picture = np.stack([XX * 6, YY * 10, (XX + 2 * YY) * 3], axis=2).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="JPEG", exif=exif, quality=95)
    out = read_array(buffer.getvalue(), source="photo.jpg")
    assert out.shape == (40, 24, 3)
    np.testing.assert_array_equal(out, decode_image(buffer.getvalue(), channels=3))


def test_pixel_limit_refuses_large_tiff_and_png_by_name():
    tiff = _tiff(np.zeros((30, 30, 4), np.uint16), photometric="minisblack", planarconfig="contig")
    with pytest.raises(ImageTooLargeError, match=r"big\.tif.*--max-image-pixels"):
        read_array(tiff, source="big.tif", options=DecodeOptions(max_image_pixels=899))
    assert read_array(tiff, source="ok.tif", options=DecodeOptions(max_image_pixels=900)).shape
    png = _png(Image.fromarray(np.zeros((30, 30), np.uint16)))
    with pytest.raises(ImageTooLargeError, match=r"big\.png"):
        read_array(png, source="big.png", options=DecodeOptions(max_image_pixels=899))


@pytest.mark.parametrize(
    "data",
    [b"", b"not an image at all", None],
    ids=["empty", "garbage", "truncated-tiff"],
)
def test_corrupt_files_fail_by_name(data):
    if data is None:
        data = _tiff(RNG.integers(0, 65536, size=(64, 64, 4), dtype=np.uint16))[:300]
    with pytest.raises(ImageDecodeError, match=r"bad\.tif"):
        read_array(data, source="bad.tif")


def test_channel_statistics_known_answers():
    ramp = np.arange(4096, dtype=np.uint16).reshape(64, 64)  # every 12-bit level once
    stats = channel_statistics([ramp], max_pixels_per_image=4096)
    assert stats.channels == 1 and stats.dtype == "uint16" and stats.bit_depth == 12
    assert stats.min == (0.0,) and stats.max == (4095.0,)
    assert stats.mean == pytest.approx((2047.5,))
    assert stats.std == pytest.approx((np.arange(4096).std(),))
    assert stats.p_low[0] == pytest.approx(np.percentile(np.arange(4096), 0.5))
    assert stats.p_high[0] == pytest.approx(np.percentile(np.arange(4096), 99.5))
    assert stats.images == 1 and stats.pixels == 4096


def test_channel_statistics_per_channel_and_widest_type():
    a = np.zeros((8, 8, 2), np.uint8)
    a[..., 1] = 200
    b = np.ones((8, 8, 2), np.float32) * np.float32(0.5)
    stats = channel_statistics([a, b])
    assert stats.dtype == "float32" and stats.bit_depth is None
    assert stats.mean == pytest.approx((0.25, 100.25))
    assert stats.max == (0.5, 200.0)
    assert ChannelStats.from_dict(stats.to_dict()) == stats


def test_channel_statistics_sample_is_seeded_and_bounded():
    images = [RNG.normal(1000, 50, size=(128, 128, 3)).astype(np.float32) for _ in range(3)]
    first = channel_statistics(images, max_pixels_per_image=500)
    assert first == channel_statistics(images, max_pixels_per_image=500)
    assert first.pixels == 1500
    other = channel_statistics(images, max_pixels_per_image=500, seed=1)
    assert other != first and other.mean == pytest.approx(first.mean, rel=0.01)
    assert first.min == tuple(float(x) for x in np.min(images, axis=(0, 1, 2)))


def test_channel_statistics_refuses_mixed_channels_and_empty():
    with pytest.raises(ValueError, match="image 1 has 3 channels.*1"):
        channel_statistics([np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.uint8)])
    with pytest.raises(ValueError, match="empty"):
        channel_statistics([])
