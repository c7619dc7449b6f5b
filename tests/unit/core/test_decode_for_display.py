"""Thumbnails of images of any kind (the QC report's): HxWx3 uint8 whatever the file holds."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile
from PIL import Image

from unet_core.data import decode_image
from unet_core.image_decode import decode_for_display
from unet_core.image_files import DecodeOptions

RNG = np.random.default_rng(0)


def _tiff(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, array, photometric="minisblack", planarconfig="contig")
    return buf.getvalue()


def test_a_four_band_uint16_tiff_shows_its_first_three_bands_stretched():
    bands = RNG.integers(1000, 5000, size=(12, 10, 4), dtype=np.uint16)
    bands[0, 0] = (1000, 1000, 1000, 0)  # every shown band spans 1000..4999 at most
    bands[1, 1] = (4999, 4999, 4999, 0)
    shown = decode_for_display(_tiff(bands), source="b.tif")
    assert shown.shape == (12, 10, 3) and shown.dtype == np.uint8
    assert tuple(shown[0, 0]) == (0, 0, 0) and tuple(shown[1, 1]) == (255, 255, 255)
    # the order of the values is kept, band by band
    first = bands[:, :, 0].ravel().argsort(kind="stable")
    assert np.all(np.diff(shown[:, :, 0].ravel()[first].astype(int)) >= 0)


def test_a_native_model_sees_a_twelve_bit_png_stretched_not_divided():
    grey = np.full((8, 8), 1000, np.uint16)
    grey[2:6, 2:6] = 1600  # ~600 of 4095 brighter: two grey levels after a division by 257
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, format="PNG")
    native = decode_for_display(buf.getvalue(), options=DecodeOptions(pixel_values="native"))
    assert native.shape == (8, 8, 3) and (native[:, :, 0] == native[:, :, 2]).all()
    assert native[3, 3, 0] == 255 and native[0, 0, 0] == 0


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_an_eight_bit_image_is_the_jobs_own_decode(mode):
    image = Image.fromarray(RNG.integers(0, 256, size=(9, 7, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    data = buf.getvalue()
    np.testing.assert_array_equal(decode_for_display(data), decode_image(data, channels=3))
