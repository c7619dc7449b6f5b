"""Splits that respect groups: `split_pairs(group_by=...)`, `train --group-by`, split.json."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from jobs.training.config import parse_args
from jobs.training.tracking import split_record
from unet_core.data import Pair, pair_group, split_pairs

SEQUENCE = r"^(.*)_\d+$"


def frames() -> list[Pair]:
    keys = [f"seq{s:02d}_{n:04d}" for s in range(12) for n in range(8)]
    return [Pair(image=f"images/{k}.png", mask=f"masks/{k}.png", key=k) for k in keys]


def test_pair_group_takes_the_first_group_or_the_whole_match():
    assert pair_group("seq03_0007", SEQUENCE) == "seq03"
    assert pair_group("a/seq03_0007", r"seq\d+") == "seq03"
    assert pair_group("nomatch", SEQUENCE) == "nomatch"
    assert pair_group("seq03_0007", None) == "seq03_0007"


@pytest.mark.parametrize("seed", range(5))
def test_a_group_never_straddles_the_split(seed):
    train, val = split_pairs(frames(), val_fraction=0.25, seed=seed, group_by=SEQUENCE)
    train_groups = {pair_group(p.key, SEQUENCE) for p in train}
    val_groups = {pair_group(p.key, SEQUENCE) for p in val}
    assert train_groups and val_groups and not train_groups & val_groups
    assert len(train) + len(val) == 96 and len(val) % 8 == 0  # whole sequences


def test_without_grouping_frames_of_a_sequence_land_on_both_sides():
    train, val = split_pairs(frames(), val_fraction=0.25, seed=0)
    assert {pair_group(p.key, SEQUENCE) for p in train} & {pair_group(p.key, SEQUENCE) for p in val}


def test_a_group_keeps_its_side_when_the_folder_grows():
    before = split_pairs(frames(), val_fraction=0.25, seed=1, group_by=SEQUENCE)[1]
    more = frames() + [Pair(image="images/seq99_0000.png", mask="m", key="seq99_0000")]
    after = split_pairs(more, val_fraction=0.25, seed=1, group_by=SEQUENCE)[1]
    assert {p.key for p in before} <= {p.key for p in after}


def test_split_json_records_the_groups_and_their_side():
    train, val = split_pairs(frames(), val_fraction=0.25, seed=0, group_by=SEQUENCE)
    data = SimpleNamespace(root="/d", val_root="/d", train=train, val=val)
    record = split_record(data, SEQUENCE)
    assert record["group_by"] == SEQUENCE
    assert len(record["groups"]) == 12
    assert {g for g, side in record["groups"].items() if side == "val"} == {
        pair_group(p.key, SEQUENCE) for p in val
    }
    assert "groups" not in split_record(data)


def test_train_group_by_flag_is_checked():
    assert parse_args(["--data", "d", "--group-by", SEQUENCE]).group_by == SEQUENCE
    with pytest.raises(SystemExit):
        parse_args(["--data", "d", "--group-by", "(unclosed"])


def test_train_splits_its_data_by_the_group_by_flag(tmp_path):
    from jobs.training.job import gather
    from unet_core.synthetic import make_synthetic_dataset

    make_synthetic_dataset(tmp_path, num_images=16, size=16, seed=0)  # synth_0000..synth_0015
    last_digit = r"^synth_\d{3}(\d)$"  # 10 groups: {0000, 0010}, {0001, 0011}, ...
    cfg = parse_args(["--data", str(tmp_path), "--group-by", last_digit, "--num-workers", "1"])
    data, _ = gather(cfg)
    train = {pair_group(p.key, last_digit) for p in data.train}
    val = {pair_group(p.key, last_digit) for p in data.val}
    assert train and val and not train & val
    assert split_record(data, cfg.group_by)["groups"] == {
        **dict.fromkeys(train, "train"),
        **dict.fromkeys(val, "val"),
    }


def test_group_by_names_keeps_blocks_of_neighbouring_frames_on_one_side():
    from jobs.planning.names import NAMES, group_names, grouping

    pairs = [Pair(image="i", mask="m", key=f"0016E5_{n:05d}") for n in range(7959, 8160, 2)]
    groups = grouping([p.key for p in pairs], NAMES)
    assert groups == group_names([p.key for p in pairs]) and len(set(groups.values())) < 30
    train, val = split_pairs(pairs, val_fraction=0.2, seed=0, group_by=groups)
    sides = {}
    for side, part in (("train", train), ("val", val)):
        for p in part:
            sides.setdefault(groups[p.key], set()).add(side)
    assert val and all(len(s) == 1 for s in sides.values())  # no block on both sides
    data = SimpleNamespace(root="/d", val_root="/d", train=train, val=val)
    record = split_record(data, NAMES)
    assert record["group_by"] == NAMES and set(record["groups"]) == set(groups.values())
    assert grouping(["a_1"], SEQUENCE) == SEQUENCE and grouping(["a_1"], None) is None
