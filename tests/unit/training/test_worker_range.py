"""--num-workers N or MIN-MAX: flags, config files, validation, the flat round trip, and what the
driver derives from it (Ray Train's ScalingConfig, the logged params)."""

from __future__ import annotations

import json

import pytest
import yaml

from jobs.training.config import TrainJobConfig, build_parser, parse_args


@pytest.mark.parametrize(
    ("given", "stored", "worker_range"),
    [
        ("4", 4, (4, 4)),
        ("2-8", "2-8", (2, 8)),
        (" 1 - 2 ", "1-2", (1, 2)),
        ("3-3", "3-3", (3, 3)),
    ],
)
def test_flag_takes_a_count_or_a_range(given, stored, worker_range):
    cfg = parse_args(["--data", "/d", "--num-workers", given])
    assert cfg.num_workers == stored and cfg.worker_range == worker_range


def test_default_and_help():
    assert parse_args(["--data", "/d"]).worker_range == (2, 2)
    text = build_parser().format_help()
    assert "--num-workers N|MIN-MAX" in text and "elastic training" in text


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("0", "--num-workers must be >= 1, got 0"),
        ("0-4", "a range needs 1 <= MIN <= MAX"),
        ("8-2", "'8-2': a range needs 1 <= MIN <= MAX"),
        ("two", "must be a count N or a range MIN-MAX (e.g. 2-8), got 'two'"),
        ("2-", "got '2-'"),
        ("-2", "--num-workers must be >= 1, got -2"),
        ("1-2-3", "got '1-2-3'"),
    ],
)
def test_invalid_counts_exit_2_with_the_fix(given, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--data", "/d", "--num-workers", given])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_python_values_are_checked_too():
    assert TrainJobConfig(data="/d", num_workers="6").num_workers == 6
    for bad in (True, 0, "4-1", 2.5):
        with pytest.raises(ValueError, match="--num-workers"):
            TrainJobConfig(data="/d", num_workers=bad)


@pytest.mark.parametrize(
    ("value", "stored"), [(4, 4), ("2-8", "2-8"), ("5", 5)], ids=["int", "range", "digits"]
)
@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_config_file_takes_a_count_or_a_range(tmp_path, suffix, value, stored):
    path = tmp_path / f"cfg{suffix}"
    values = {"data": "/d", "num_workers": value}
    if suffix == ".json":
        path.write_text(json.dumps(values))
    else:
        path.write_text(yaml.safe_dump(values))
    assert parse_args(["--config", str(path)]).num_workers == stored
    assert parse_args(["--config", str(path), "--num-workers", "1-3"]).num_workers == "1-3"


def test_config_file_rejects_other_types(tmp_path, capsys):
    path = tmp_path / "cfg.json"
    for bad, message in (
        (2.5, "'num_workers' must be int or str, got 2.5"),
        (True, "'num_workers' must be int or str, got True"),
        ("9-1", "a range needs 1 <= MIN <= MAX"),
    ):
        path.write_text(json.dumps({"data": "/d", "num_workers": bad}))
        with pytest.raises(SystemExit):
            parse_args(["--config", str(path)])
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("given", ["3", "2-8"])
def test_flat_round_trip_keeps_the_value_as_given(given, tmp_path):
    cfg = parse_args(["--data", "/d", "--num-workers", given])
    flat = cfg.to_flat()
    assert flat["num_workers"] == (int(given) if given.isdigit() else given)
    assert TrainJobConfig.from_flat(flat) == cfg
    path = tmp_path / "flat.json"  # the flat dict is JSON, and a config file again
    path.write_text(json.dumps(flat))
    assert parse_args(["--config", str(path)]) == cfg


def test_params_log_the_range_and_what_it_spans():
    from jobs.training.tracking import run_params

    cfg = parse_args(["--data", "/d", "--num-workers", "1-2", "--batch-size", "4"])
    loop = {
        "train": cfg.train.to_dict(),
        "model": {"in_channels": 3, "num_classes": 2},
        "class_map": {"classes": [{"name": "a"}, {"name": "b"}]},
        "preprocess": {},
        "train_rows": 13,
        "worker_range": list(cfg.worker_range),
    }
    params = run_params(cfg.to_flat(), loop)
    assert params["num_workers"] == "1-2" and params["train_rows"] == 13
    assert params["global_batch_size"] == "4-8"
    assert params["steps_per_epoch"] == "2-4"  # 13 rows: 4 steps on 1 worker, 2 on 2 (6 each)
    fixed = run_params(cfg.to_flat(), {**loop, "worker_range": [2, 2]})
    assert fixed["global_batch_size"] == 8 and fixed["steps_per_epoch"] == 2
