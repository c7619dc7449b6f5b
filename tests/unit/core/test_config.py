import numpy as np
import pytest

from unet_core.config import ModelConfig, PreprocessConfig, TrainConfig


def test_model_config_round_trip_ignores_unknown_keys():
    cfg = ModelConfig(in_channels=1, num_classes=3, base_width=16, depth=3, norm="group")
    assert ModelConfig.from_dict({**cfg.to_dict(), "future_key": 1}) == cfg


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"in_channels": 0}, "in_channels must be >= 1"),
        ({"num_classes": 1}, "binary task uses 2 classes"),
        ({"norm": "layer"}, "norm must be one of"),
        ({"upsampling": "nearest"}, "upsampling must be one of"),
        ({"dropout": 1.0}, "dropout must be in"),
        ({"depth": 0}, "must be >= 1"),
    ],
)
def test_model_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)


def test_preprocess_normalize_shape_and_values():
    pre = PreprocessConfig(channels=3, mean=(0.5,), std=(0.25,))
    assert pre.mean == (0.5, 0.5, 0.5)
    image = np.full((4, 5, 3), 255, dtype=np.uint8)
    out = pre.normalize(image)
    assert out.shape == (3, 4, 5) and out.dtype == np.float32
    np.testing.assert_allclose(out, 2.0)
    with pytest.raises(ValueError, match="expects 3"):
        pre.normalize(np.zeros((4, 5, 1), dtype=np.uint8))


def test_preprocess_round_trip():
    pre = PreprocessConfig.for_channels(1)
    assert PreprocessConfig.from_dict(pre.to_dict()) == pre


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"ce_weight": 0.0, "dice_weight": 0.0}, "not both 0"),
    ],
)
def test_train_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)
