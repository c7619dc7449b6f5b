"""The training job's config: flags from the dataclass, config files, precedence, validation."""

from __future__ import annotations

import json

import pytest
import yaml

from jobs.training.config import DEMO_PRESET, TrainJobConfig, build_parser, parse_args


def test_every_field_has_a_documented_flag():
    text = build_parser().format_help()
    for flag in (
        "--class-map", "--epochs", "--batch-size", "--crop-size", "--base-width", "--depth",
        "--lr", "--seed", "--num-workers", "--device", "--gpus-per-worker", "--run-name",
        "--storage-path", "--max-failures", "--register-as", "--alias", "--min-miou",
        "--force-alias", "--experiment", "--val-data", "--val-fraction", "--s3-endpoint-url",
        "--in-channels", "--config", "--keep-checkpoints", "--max-failed-fraction",
        "--cpus-per-worker",
    ):  # fmt: skip
        assert flag in text, flag
    for old in ("--use-gpu", "--no-gpu", "--max-bad-pairs"):  # old spellings: not in the help
        assert old not in text, old
    # the help is the field's docstring
    assert "Images per step on each worker" in text
    assert "Validation mIoU a version needs" in text


def test_flags_map_onto_the_nested_configs():
    cfg = parse_args(
        ["--data", "/d", "--epochs", "3", "--batch-size", "2", "--base-width", "8",
         "--device", "cpu", "--max-grad-norm", "none", "--no-augment", "--in-channels", "1"]
    )  # fmt: skip
    assert cfg.data == "/d" and cfg.in_channels == 1
    assert cfg.train.epochs == 3 and cfg.train.batch_size == 2 and cfg.train.augment is False
    assert cfg.train.max_grad_norm is None
    assert cfg.model.base_width == 8
    assert cfg.device == "cpu" and cfg.use_gpu is False
    assert parse_args(["--data", "/d", "--device", "gpu"]).use_gpu is True
    assert parse_args(["--data", "/d"]).use_gpu is None
    assert parse_args(["--data", "/d", "--gpus-per-worker", "0.5"]).gpus_per_worker == 0.5


def test_demo_preset_only_without_data():
    demo = parse_args([])
    assert demo.train.epochs == DEMO_PRESET["epochs"] and demo.model.base_width == 16
    assert parse_args(["--epochs", "2"]).train.epochs == 2  # flags still win
    real = parse_args(["--data", "/d"])
    assert real.train.epochs == 20 and real.model.base_width == 64  # library defaults


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_config_file_then_flags_override(tmp_path, suffix):
    values = {"data": "/from-file", "epochs": 5, "lr": 0.01, "model": {"depth": 2}}
    path = tmp_path / f"cfg{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(values))
    else:
        path.write_text(yaml.safe_dump(values))
    cfg = parse_args(["--config", str(path), "--epochs", "9"])
    assert cfg.data == "/from-file" and cfg.train.lr == 0.01 and cfg.model.depth == 2
    assert cfg.train.epochs == 9


def test_config_file_errors_exit_2_with_the_key(tmp_path, capsys):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"epochz": 3}))
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--config", str(path)])
    assert exit_info.value.code == 2
    assert "unknown keys ['epochz']" in capsys.readouterr().err
    path.write_text(json.dumps({"epochs": "three"}))
    with pytest.raises(SystemExit):
        parse_args(["--config", str(path)])
    assert "'epochs' must be int" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--num-workers", "0"], "--num-workers must be >= 1"),
        (["--in-channels", "0"], "--in-channels must be >= 1"),
        (["--min-miou", "1.5"], "--min-miou must be in [0, 1]"),
        (["--run-name", "a b"], "--run-name 'a b' must be"),
        (["--epochs", "0"], "epochs must be >= 1"),
        (["--norm", "layer"], "norm must be one of"),
        (["--max-bad-pairs", "-1"], "--max-bad-pairs must be >= 0, got -1"),
        (["--max-failed-fraction", "1.5"], "--max-failed-fraction must be in [0, 1], got 1.5"),
        (["--device", "tpu"], "--device must be one of auto, cpu, gpu, got 'tpu'"),
        (["--gpus-per-worker", "0"], "--gpus-per-worker must be > 0"),
    ],
)
def test_invalid_values_exit_2_with_the_fix(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--data", "/d", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_failed_pairs_default_to_none_allowed():
    cfg = parse_args(["--data", "/d"])
    assert cfg.max_failed_fraction == 0.0 and cfg.allowed_bad_pairs(1000) == 0
    # a fraction of the pairs: failed / pairs above it fails the job
    assert parse_args(["--data", "/d", "--max-failed-fraction", "0.1"]).allowed_bad_pairs(25) == 2
    assert TrainJobConfig(data="/d", max_failed_fraction=0.1).allowed_bad_pairs(10) == 1
    # the old --max-bad-pairs N keeps its meaning: a count, whatever the number of pairs
    old = parse_args(["--data", "/d", "--max-bad-pairs", "3"])
    assert old.max_bad_pairs == 3 and old.allowed_bad_pairs(10) == old.allowed_bad_pairs(10**6) == 3
    with pytest.raises(ValueError, match="--max-bad-pairs must be >= 0"):
        TrainJobConfig(data="/d", max_bad_pairs=-2)


def test_flat_round_trip():
    cfg = parse_args(["--data", "/d", "--epochs", "4", "--depth", "3"])
    flat = cfg.to_flat()
    assert "in_channels" in flat and "num_classes" not in flat
    assert TrainJobConfig.from_flat(flat) == cfg
