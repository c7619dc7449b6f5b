import io
import os
import pickle

import numpy as np
import pytest
import torch

from unet_core.checkpoint import checkpoint_to_bytes, load_checkpoint, save_checkpoint
from unet_core.classes import ClassMap
from unet_core.config import ModelConfig, PreprocessConfig
from unet_core.model import UNet

CLASSES = ClassMap.binary(("membrane", "cell"), (0, 255))
GRAY = PreprocessConfig(channels=1, mean=(0.4,), std=(0.2,))


def _save(path, model, config=None, extra=None):
    save_checkpoint(
        path,
        model,
        model_config=config or model.config,
        class_map=CLASSES,
        preprocess=GRAY,
        extra={"epoch": 3} if extra is None else extra,
    )


def _same_outputs(a, b, shape=(1, 1, 33, 47)):
    x = torch.randn(*shape)
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def test_round_trip_restores_weights_and_configs(tmp_path):
    model = UNet(1, 2, base_width=4, depth=2, norm="group", upsampling="bilinear").eval()
    _save(tmp_path / "m.pt", model, extra={"epoch": 3, "history": {"loss": [0.5, 0.25]}})
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert _same_outputs(loaded.model, model)
    assert not loaded.model.training
    assert loaded.model_config == model.config
    assert loaded.class_map == CLASSES
    assert loaded.preprocess == GRAY
    assert loaded.extra == {"epoch": 3, "history": {"loss": [0.5, 0.25]}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]  # no temporary file left


def test_batchnorm_running_stats_survive(tmp_path):
    model = UNet(3, 3, base_width=4, depth=1)
    model(torch.randn(4, 3, 16, 16) * 3 + 1)  # train-mode pass updates the running stats
    _save(tmp_path / "m.pt", model)
    assert _same_outputs(load_checkpoint(str(tmp_path / "m.pt")).model, model, (2, 3, 20, 20))


def test_bytes_and_stream_sources():
    model = UNet(1, 2, base_width=4, depth=1)
    data = checkpoint_to_bytes(model, model_config=model.config, class_map=CLASSES, preprocess=GRAY)
    for source in (data, io.BytesIO(data)):
        loaded = load_checkpoint(source)
        assert _same_outputs(loaded.model, model)
        assert loaded.extra == {}


def test_ddp_and_compile_wrappers_are_saved_clean(tmp_path):
    model = UNet(3, 2, base_width=4, depth=1)
    ddp = torch.nn.Module()
    ddp.module = model  # what DistributedDataParallel looks like
    compiled = torch.nn.Module()
    compiled._orig_mod = ddp  # torch.compile around DDP
    for i, wrapper in enumerate((ddp, compiled)):
        path = tmp_path / f"m{i}.pt"
        _save(path, wrapper, model.config)
        state = torch.load(path, weights_only=True)["state_dict"]
        assert state.keys() == model.state_dict().keys()
        assert _same_outputs(load_checkpoint(path).model, model, (1, 3, 9, 9))


def test_prefixed_keys_in_a_file_are_stripped(tmp_path):
    model = UNet(3, 2, base_width=4, depth=1)
    payload = torch.load(io.BytesIO(_bytes(model)), weights_only=True)
    payload["state_dict"] = {f"module._orig_mod.{k}": v for k, v in payload["state_dict"].items()}
    torch.save(payload, tmp_path / "ddp.pt")
    assert _same_outputs(load_checkpoint(tmp_path / "ddp.pt").model, model, (1, 3, 9, 9))


def _bytes(model):
    return checkpoint_to_bytes(
        model, model_config=model.config, class_map=CLASSES, preprocess=PreprocessConfig()
    )


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_pickled_code_is_refused_and_never_runs(tmp_path):
    marker = str(tmp_path / "code-ran")
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"format": "unet-ray/1", "x": _Evil(marker)}, f, protocol=2)
    with pytest.raises(ValueError, match=r"evil\.pt: not a loadable"):
        load_checkpoint(path)
    assert not os.path.exists(marker)


def test_missing_corrupt_and_wrong_format_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.pt does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match=r"junk\.pt: not a loadable"):
        load_checkpoint(tmp_path / "junk.pt")
    data = _bytes(UNet(3, 2, base_width=4, depth=1))
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.pt: not a loadable"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other\.pt: expected checkpoint format"):
        load_checkpoint(tmp_path / "other.pt")


def test_weights_that_do_not_fit_the_config_are_named(tmp_path):
    payload = torch.load(io.BytesIO(_bytes(UNet(3, 2, base_width=4, depth=1))), weights_only=True)
    payload["model_config"]["depth"] = 2
    torch.save(payload, tmp_path / "mixed.pt")
    with pytest.raises(ValueError, match=r"mixed\.pt: weights or configs"):
        load_checkpoint(tmp_path / "mixed.pt")


def test_save_refuses_what_would_not_load_and_keeps_the_old_file(tmp_path):
    model = UNet(1, 2, base_width=4, depth=1)
    path = tmp_path / "m.pt"
    _save(path, model)
    before = path.read_bytes()
    with pytest.raises(TypeError, match=r"extra\['lr'\] is a numpy.float64"):
        _save(path, model, extra={"lr": np.float64(0.1)})
    wrong = ModelConfig(in_channels=1, num_classes=2, base_width=8, depth=1)
    with pytest.raises(ValueError, match="does not describe the model"):
        _save(path, model, config=wrong)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_interrupted_write_leaves_the_old_file(tmp_path, monkeypatch):
    model = UNet(1, 2, base_width=4, depth=1)
    path = tmp_path / "m.pt"
    _save(path, model)
    before = path.read_bytes()

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        _save(path, model)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_file_permissions_follow_the_umask(tmp_path):
    (tmp_path / "plain").write_bytes(b"")
    _save(tmp_path / "m.pt", UNet(1, 2, base_width=4, depth=1))
    mode = (tmp_path / "m.pt").stat().st_mode & 0o777
    assert mode == (tmp_path / "plain").stat().st_mode & 0o777
