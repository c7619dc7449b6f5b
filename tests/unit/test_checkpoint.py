import pickle

import pytest
import torch

from unet_core.checkpoint import load_checkpoint, save_checkpoint
from unet_core.classes import ClassMap
from unet_core.config import PreprocessConfig
from unet_core.model import UNet


def _save(path, model, config=None):
    save_checkpoint(
        path,
        model,
        model_config=config or model.config,
        class_map=ClassMap.binary(("membrane", "cell"), (0, 255)),
        preprocess=PreprocessConfig.for_channels(1),
        extra={"epoch": 3},
    )


def test_round_trip_restores_weights_and_configs(tmp_path):
    model = UNet(1, 2, base_width=4, depth=2, norm="group").eval()
    _save(tmp_path / "m.pt", model)
    loaded = load_checkpoint(tmp_path / "m.pt")
    x = torch.randn(1, 1, 33, 47)
    with torch.no_grad():
        assert torch.equal(loaded.model.eval()(x), model(x))
    assert loaded.model_config == model.config
    assert loaded.class_map.names == ["membrane", "cell"]
    assert loaded.preprocess.channels == 1
    assert loaded.extra == {"epoch": 3}
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temporary file


def test_ddp_prefixed_model_is_saved_clean(tmp_path):
    model = UNet(3, 2, base_width=4, depth=1)
    wrapper = torch.nn.Module()
    wrapper.module = model  # what DistributedDataParallel looks like
    _save(tmp_path / "m.pt", wrapper, model.config)
    state = torch.load(tmp_path / "m.pt", weights_only=True)["state_dict"]
    assert not any(k.startswith("module.") for k in state)
    load_checkpoint(tmp_path / "m.pt")


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled code ran",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"format": "unet-ray/1", "x": _Evil()}, f)
    with pytest.raises(ValueError, match="not a loadable"):
        load_checkpoint(path)


def test_missing_and_wrong_format(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="expected checkpoint format"):
        load_checkpoint(tmp_path / "other.pt")
