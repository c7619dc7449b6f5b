"""What importing the package costs: Ray's CPU workers decode and write without PyTorch."""

import subprocess
import sys

import unet_core

PROBE = """
import sys
import unet_core
import unet_core.data, unet_core.classes, unet_core.viz
import jobs.inference.decode, jobs.segmenting.writer, jobs.inference.config
heavy = sorted(m for m in ("torch", "ray", "mlflow", "boto3") if m in sys.modules)
assert not heavy, heavy
from unet_core import UNet, predict
assert "torch" in sys.modules
"""


def test_decode_and_write_modules_do_not_import_torch():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_inference_configs_cpu_tile_and_tta_modes_are_the_librarys():
    from jobs.inference.config import TILE_SIZE_CPU, TTA_MODES
    from unet_core.inference_device import TILE_SIZE_CPU as LIBRARY_TILE
    from unet_core.tta import TTA_MODES as LIBRARY_MODES

    # the config keeps its own copies to stay free of torch
    assert (TILE_SIZE_CPU, TTA_MODES) == (LIBRARY_TILE, LIBRARY_MODES)


def test_every_public_name_resolves():
    assert sorted(unet_core.__all__) == sorted(unet_core._EXPORTS)
    for name in unet_core.__all__:
        assert getattr(unet_core, name) is not None, name
    assert set(unet_core.__all__) <= set(dir(unet_core))


def test_unknown_name_is_an_attribute_error():
    try:
        unet_core.does_not_exist  # noqa: B018
    except AttributeError as exc:
        assert "does_not_exist" in str(exc)
    else:
        raise AssertionError("expected AttributeError")
