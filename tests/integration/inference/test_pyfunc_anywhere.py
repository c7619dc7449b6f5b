"""A registered model loads where this project is not installed.

The model is logged and registered by the training job's own code (the ``registered`` fixture
calls jobs/training/registry.py), then loaded with ``mlflow.pyfunc.load_model`` in a Python
that sees the virtual environment's packages but neither this checkout nor its editable
install: ``python -I -S`` (no site processing, so the editable finder's .pth never runs), the
venv's site-packages appended by hand, a working directory outside the repository.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.integration.inference.helpers import REPO_ROOT
from unet_core.checkpoint import load_checkpoint
from unet_core.data import read_image
from unet_core.model import UNet
from unet_core.predict import predict, prepare_for_inference

pytestmark = pytest.mark.integration

ELSEWHERE = """
import json, sys
sys.path.extend(json.loads(sys.argv[1]))
try:
    import unet_core
except ImportError:
    pass
else:
    sys.exit(f"unet_core is importable before the model is loaded: {unet_core.__file__}")
try:
    import jobs
except ImportError:
    pass
else:
    sys.exit(f"this project's jobs package is importable: {jobs.__path__}")

import mlflow
import numpy as np
import pandas as pd
import torch

mlflow.set_tracking_uri(sys.argv[2])
model = mlflow.pyfunc.load_model("models:/unet@champion")
image = np.load(sys.argv[3])
np.save(sys.argv[4], model.predict(image))
png = open(sys.argv[5], "rb").read()
np.save(sys.argv[6], model.predict(pd.DataFrame({"image": [png]}))["mask"][0])
unet = model.unwrap_python_model().loaded.model  # the UNet itself, for PyTorch users
torch.save(unet.state_dict(), sys.argv[7])
print(json.dumps({"unet_core": sys.modules["unet_core"].__file__, "unet": type(unet).__name__}))
"""


def _venv_packages() -> list[str]:
    paths = sysconfig.get_paths()
    return sorted({paths["purelib"], paths["platlib"]})


def test_registered_model_loads_without_the_project(
    tmp_path, registered, mlflow_uri, synthetic_root
):
    import mlflow

    ckpt, version = registered
    loaded = load_checkpoint(ckpt)
    model = prepare_for_inference(loaded.model)
    source = sorted((synthetic_root / "images").glob("*.png"))[0]
    image = read_image(source, channels=loaded.preprocess.channels)
    expected = predict(model, image, preprocess=loaded.preprocess).mask
    assert len(np.unique(expected)) > 1  # a mask that says something: equality is not trivial

    # What the model carries: unet_core's code, requirements of unet_core and not this project.
    folder = Path(
        mlflow.artifacts.download_artifacts("models:/unet@champion", dst_path=tmp_path / "dl")
    )
    assert (folder / "code/unet_core/predict.py").is_file()
    assert not list((folder / "code").rglob("__pycache__"))
    requirements = (folder / "requirements.txt").read_text().split()
    torch_pin = f"torch=={torch.__version__.split('+')[0]}"
    assert {torch_pin, "numpy", "pillow"} <= set(requirements), requirements
    assert not [r for r in requirements if r.startswith(("unet-ray", "unet_ray", "-e", "."))]

    # The PyTorch user's way (docs/registry.md): the checkpoint in the model
    # folder rebuilds the UNet (artifacts/unet.pt for a training run; named as logged here).
    rebuilt = load_checkpoint(folder / "artifacts" / ckpt.name).model
    assert isinstance(rebuilt, UNet)
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key

    report, array_mask, frame_mask, state = pyfunc_elsewhere(tmp_path, mlflow_uri, image)
    assert report["unet"] == "UNet"
    assert not Path(report["unet_core"]).is_relative_to(REPO_ROOT), report  # the model's copy
    np.testing.assert_array_equal(array_mask, expected)
    np.testing.assert_array_equal(frame_mask, expected)
    assert state.keys() == loaded.model.state_dict().keys()
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(state[key], value), key
    assert version == "2"


def pyfunc_elsewhere(tmp_path: Path, mlflow_uri: str, image: np.ndarray):
    """Run ELSEWHERE (models:/unet@champion loaded by MLflow in a Python without this project)
    on ``image`` given as an array and as a PNG frame: (its report, the array's mask, the
    frame's mask, the loaded model's state dict)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    (elsewhere / "image.png").write_bytes(png.getvalue())
    np.save(elsewhere / "image.npy", image)
    out = [elsewhere / n for n in ("array_mask.npy", "frame_mask.npy", "state.pt")]
    args = [json.dumps(_venv_packages()), mlflow_uri, elsewhere / "image.npy", out[0]]
    args += [elsewhere / "image.png", out[1], out[2]]
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", ELSEWHERE, *map(str, args)],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return report, np.load(out[0]), np.load(out[1]), torch.load(out[2], weights_only=True)
