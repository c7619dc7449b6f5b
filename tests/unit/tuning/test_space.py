"""The search-space file of unet-tune: what it accepts, how it is refused, the default space,
and how a trial's sample becomes a train job config."""

from __future__ import annotations

import pytest

from jobs.training.config import TrainJobConfig
from jobs.tuning.config import parse_tune_args
from jobs.tuning.space import (
    AUGMENT_STRENGTH,
    SearchSpaceError,
    default_space,
    load_space,
    parse_space,
    scaled_augmentation,
    trial_config,
)
from unet_core.config import TrainConfig


def write(tmp_path, text: str, name: str = "space.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_file_with_every_domain(tmp_path):
    space = load_space(
        write(
            tmp_path,
            "lr: {loguniform: [5e-4, 5.0e-3]}\n"  # YAML reads 5e-4 as text: taken as a number
            "base_width: {choice: [8, 16]}\n"
            "class-balance: {grid: [0, 0.5]}\n"
            "augment_strength: {uniform: [0.5, 1.5]}\n"
            "depth: {randint: [2, 4]}\n"
            "encoder: {choice: [unet, resnet18]}\n"
            "dropout: 0.1\n",
        )
    )
    assert space.describe() == {
        "lr": {"loguniform": [5e-4, 5e-3]},
        "base_width": {"choice": [8, 16]},
        "class_balance": {"grid": [0.0, 0.5]},
        "augment_strength": {"uniform": [0.5, 1.5]},
        "depth": {"randint": [2, 4]},
        "encoder": {"choice": ["unet", "resnet18"]},
        "dropout": 0.1,
    }
    assert space.trial_count(3) == 6  # every grid value per sample
    tune_space = space.to_tune()
    assert tune_space["dropout"] == 0.1
    assert tune_space["class_balance"] == {"grid_search": [0.0, 0.5]}
    assert tune_space["lr"].lower == 5e-4 and tune_space["lr"].upper == 5e-3


def test_json_file(tmp_path):
    space = load_space(write(tmp_path, '{"lr": {"uniform": [0.001, 0.01]}}', "space.json"))
    assert space.keys() == ["lr"] and space.trial_count(4) == 4


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("learning_rate: {uniform: [0.1, 0.2]}", ["'learning_rate'", "searchable keys", "'lr'"]),
        ("epochs: {choice: [2, 4]}", ["'epochs' cannot be searched", "--epochs"]),
        ("seed: {choice: [1, 2]}", ["'seed' cannot be searched", "--seed"]),
        ("lr: {between: [0.1, 0.2]}", ["'lr'", "expected one domain", "loguniform"]),
        ("lr: {loguniform: [0, 0.2]}", ["'lr'", "0 < low", "use uniform"]),
        ("lr: {uniform: [0.2, 0.1]}", ["'lr'", "low < high"]),
        ("lr: {uniform: [0.1]}", ["'lr'", "[low, high]"]),
        ("lr: {choice: []}", ["'lr'", "non-empty list"]),
        ("lr: {choice: [0.1, fast]}", ["'lr'", "must be float", "'fast'"]),
        ("lr: {choice: [0.1, -1]}", ["'lr'", "-1", "lr must be > 0"]),
        ("base_width: {randint: [4.5, 8]}", ["'base_width'", "must be int"]),
        ("encoder: {choice: [unet, vgg]}", ["'encoder'", "'vgg'", "encoder must be one of"]),
        ("augment_strength: {choice: [-1]}", ["'augment_strength'", ">= 0"]),
        ("- lr", ["expected a mapping"]),
    ],
)
def test_refusals_name_the_key_and_the_fix(tmp_path, text, names):
    path = write(tmp_path, text)
    with pytest.raises(SearchSpaceError) as caught:
        load_space(path)
    message = str(caught.value)
    assert str(path) in message
    for name in names:
        assert name in message, message


def test_every_problem_at_once():
    with pytest.raises(SearchSpaceError) as caught:
        parse_space({"lr": {"uniform": [1, 0]}, "widht": {"choice": [8]}})
    assert "'lr'" in str(caught.value) and "'widht'" in str(caught.value)


def test_missing_file_says_how_to_write_one(tmp_path):
    with pytest.raises(SearchSpaceError, match="does not exist; write e.g. 'lr: {loguniform"):
        load_space(tmp_path / "nope.yaml")


def test_default_space():
    cpu = default_space(use_gpu=False)
    assert cpu.describe() == {
        "lr": {"loguniform": [5e-4, 5e-3]},
        "base_width": {"choice": [8, 16, 24]},
        "class_balance": {"choice": [0.0, 0.5]},
        AUGMENT_STRENGTH: {"uniform": [0.5, 1.5]},
    }
    assert cpu.trial_count(8) == 8
    assert default_space(use_gpu=True).describe()["base_width"] == {"choice": [32, 48, 64]}
    # the encoder only when given
    given = default_space(use_gpu=False, given={"encoder": "resnet18"})
    assert given.describe()["encoder"] == "resnet18"


def test_augment_strength_scales_the_recipe():
    recipe = TrainConfig(
        brightness=0.2, contrast=0.3, gamma=0.4, noise_std=2.0, rotate_degrees=20.0,
        scale_min=0.8, scale_max=1.2, elastic_sigma=10.0, hflip=0.5,
    )  # fmt: skip
    doubled = scaled_augmentation(recipe, 2.0)
    assert doubled["brightness"] == pytest.approx(0.4) and doubled["contrast"] == pytest.approx(0.6)
    assert doubled["gamma"] == pytest.approx(0.8) and doubled["noise_std"] == pytest.approx(4.0)
    assert doubled["rotate_degrees"] == pytest.approx(40.0)
    assert doubled["elastic_sigma"] == pytest.approx(20.0)
    assert (doubled["scale_min"], doubled["scale_max"]) == pytest.approx((0.6, 1.4))
    assert "hflip" not in doubled  # probabilities stay
    assert scaled_augmentation(recipe, 0.0)["brightness"] == 0.0
    # kept valid: a jitter factor stays below 1
    assert scaled_augmentation(recipe, 10.0)["contrast"] == pytest.approx(0.95)
    TrainConfig(**{**recipe.__dict__, **scaled_augmentation(recipe, 10.0)})


def test_trial_config_applies_the_sample():
    base = TrainJobConfig.from_flat({"data": "/d", "lr": 1e-3, "brightness": 0.2, "epochs": 3})
    cfg = trial_config(
        base, {"lr": 4e-3, "base_width": 24, AUGMENT_STRENGTH: 0.5}, run_name="s-trial_1"
    )
    assert cfg.train.lr == 4e-3 and cfg.model.base_width == 24
    assert cfg.train.brightness == pytest.approx(0.1) and cfg.train.epochs == 3
    assert cfg.run_name == "s-trial_1" and cfg.data == "/d"


def test_search_flags_and_train_flags(tmp_path):
    cfg = parse_tune_args(
        ["--data", str(tmp_path), "--trials", "4", "--grace-epochs", "2", "--epochs", "6",
         "--lr", "2e-3", "--metric", "val_loss", "--max-concurrent-trials", "2"]
    )  # fmt: skip
    assert (cfg.trials, cfg.grace_epochs, cfg.max_concurrent_trials) == (4, 2, 2)
    assert (cfg.report_key, cfg.mode) == ("val_loss", "min")
    assert cfg.train.train.epochs == 6 and cfg.train.train.lr == 2e-3
    assert parse_tune_args(["--data", str(tmp_path)]).metric == "val_mean_iou"


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--grace-epochs", "5", "--epochs", "4"], "--grace-epochs must be in 1..--epochs (4)"),
        (["--trials", "0"], "--trials must be >= 1"),
        (["--metric", "accuracy"], "--metric must be one of val_mean_iou"),
    ],
)
def test_search_flag_refusals(tmp_path, capsys, argv, says):
    with pytest.raises(SystemExit) as caught:
        parse_tune_args(["--data", str(tmp_path), *argv])
    assert caught.value.code == 2
    assert says in capsys.readouterr().err
