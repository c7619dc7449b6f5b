"""--amp of the training job: the flag, its validation, and the dtype each worker trains in."""

from __future__ import annotations

import pytest
import torch

from jobs.training.config import TrainJobConfig, build_parser, parse_args
from jobs.training.worker_loop import training_amp_dtype
from unet_core.precision import cpu_supports_bf16


def test_amp_flag_is_documented_and_defaults_to_auto():
    assert "Mixed precision of training" in build_parser().format_help()
    assert parse_args(["--data", "/d"]).amp == "auto"
    assert parse_args(["--data", "/d", "--amp", "bf16"]).amp == "bf16"
    assert TrainJobConfig.from_flat({"amp": "off"}).to_flat()["amp"] == "off"


def test_invalid_amp_is_refused_naming_the_choices(capsys):
    with pytest.raises(ValueError, match=r"--amp must be one of auto, bf16, off, got 'fp16'"):
        TrainJobConfig(amp="fp16")
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--data", "/d", "--amp", "BF16"])
    assert exit_info.value.code == 2
    assert "--amp must be one of auto, bf16, off, got 'BF16'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "device, mode, expected",
    [
        ("cpu", "auto", torch.bfloat16 if cpu_supports_bf16() else None),  # native bf16 only
        ("cpu", "bf16", torch.bfloat16),
        ("cpu", "off", None),
        ("cuda", "auto", torch.bfloat16),
        ("cuda", "off", None),
    ],
)
def test_worker_amp_dtype(device, mode, expected):
    assert training_amp_dtype(torch.device(device), mode) == expected
