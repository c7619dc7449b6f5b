"""K-fold cross-validation: the folds (disjoint, covering, group-aware, balanced, seeded) and
the --folds / --fold flags."""

from __future__ import annotations

import pytest

from jobs.common.exits import REFUSED, code_of, kind_of
from jobs.planning.names import group_names
from jobs.training.config import parse_args
from jobs.training.folds import FoldError, fold_pairs, fold_split_record
from unet_core.data import Pair


def _pairs(keys):
    return [Pair(f"images/{k}.png", f"masks/{k}.png", k) for k in keys]


def _keys(fold):
    return [p.key for p in fold]


def test_folds_are_disjoint_cover_the_set_and_sorted():
    pairs = _pairs([f"case{i:02d}" for i in range(23)])
    folds = fold_pairs(pairs, 5, seed=0, group_by=None)
    assert len(folds) == 5
    keys = [k for f in folds for k in _keys(f)]
    assert sorted(keys) == sorted(p.key for p in pairs) and len(set(keys)) == len(keys)
    assert all(_keys(f) == sorted(_keys(f)) for f in folds)
    assert sorted(len(f) for f in folds) == [4, 4, 5, 5, 5]  # balanced by pair count


def test_whole_groups_per_fold_with_a_regex():
    # sequences of unequal length: a..e with 6, 5, 4, 3, 2 frames, and two loose cases
    keys = [f"{s}_{i:03d}" for s, n in zip("abcde", (6, 5, 4, 3, 2), strict=True) for i in range(n)]
    pairs = _pairs([*keys, "x", "y"])
    folds = fold_pairs(pairs, 3, seed=1, group_by=r"^(.*)_\d+$")
    owner = {}
    for i, fold in enumerate(folds):
        for key in _keys(fold):
            group = key.split("_")[0]
            assert owner.setdefault(group, i) == i, f"group {group} on two folds"
    sizes = sorted(len(f) for f in folds)
    # greedy largest-first into the smallest fold: 6 | 5+2 | 4+3, then x and y
    assert sizes[-1] - sizes[0] <= 1, sizes
    assert sum(sizes) == len(pairs)


def test_plan_name_groups_as_a_mapping():
    keys = [f"stack/slice_{i:02d}" for i in range(40)]
    groups = group_names(keys)  # blocks of 2 neighbouring slices
    folds = fold_pairs(_pairs(keys), 4, seed=0, group_by=groups)
    for fold in folds:
        for key in _keys(fold):
            partners = [k for k in keys if groups[k] == groups[key]]
            assert set(partners) <= set(_keys(fold))
    assert [len(f) for f in folds] == [10, 10, 10, 10]


def test_deterministic_for_a_seed_and_the_seed_matters():
    pairs = _pairs([f"k{i}" for i in range(12)])  # all groups of 1: ties everywhere
    first = [_keys(f) for f in fold_pairs(pairs, 3, seed=7, group_by=None)]
    again = [_keys(f) for f in fold_pairs(list(reversed(pairs)), 3, seed=7, group_by=None)]
    assert first == again  # independent of the listing order
    others = {
        tuple(map(tuple, (_keys(f) for f in fold_pairs(pairs, 3, seed=s, group_by=None))))
        for s in range(8)
    }
    assert len(others) > 1


def test_fewer_groups_than_folds_is_refused_naming_the_fix():
    pairs = _pairs([f"a_{i}" for i in range(5)] + [f"b_{i}" for i in range(5)])
    with pytest.raises(FoldError, match=r"2 --group-by groups cannot make 3 folds.*--folds"):
        fold_pairs(pairs, 3, seed=0, group_by=r"^(.)_")
    assert kind_of(FoldError("x")) == "data" and code_of("data") == REFUSED


def test_split_record_names_the_fold_its_groups_and_keys():
    pairs = _pairs(["a_1", "a_2", "b_1", "c_1"])
    folds = fold_pairs(pairs, 2, seed=0, group_by=r"^(.)_")
    record = fold_split_record(folds, 0, r"^(.)_", "/data")
    assert record["fold"] == 0 and record["folds"] == 2 and record["group_by"] == r"^(.)_"
    assert sorted(record["train"] + record["val"]) == ["a_1", "a_2", "b_1", "c_1"]
    assert set(record["train_groups"]).isdisjoint(record["val_groups"])
    assert record["val"] == _keys(folds[0])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--folds", "1"], "--folds must be 0"),
        (["--fold", "0"], "--fold i needs --folds K"),
        (["--folds", "3", "--fold", "3"], r"--fold must be in 0..2"),
        (["--folds", "3", "--val-data", "/v"], "--val-data and --folds exclude each other"),
        (["--folds", "2", "--oof-tta", "spin"], "--oof-tta must be one of"),
    ],
)
def test_fold_flags_are_validated(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--data", "/d", *argv])
    assert message in capsys.readouterr().err


def test_fold_flags_parse():
    cfg = parse_args(["--data", "/d", "--folds", "5", "--fold", "2", "--oof-tta", "hflip"])
    assert (cfg.folds, cfg.fold, cfg.oof_tta) == (5, 2, "hflip")
    assert parse_args(["--data", "/d"]).folds == 0


@pytest.mark.parametrize(
    ("resources", "argv", "expected"),
    [
        ({"CPU": 2.0}, ["--num-workers", "1", "--cpus-per-worker", "1"], 1),  # a 2-CPU local Ray
        ({"CPU": 8.0}, ["--num-workers", "1", "--cpus-per-worker", "1"], 3),  # capped at K
        ({"CPU": 8.0}, ["--num-workers", "2", "--cpus-per-worker", "1"], 3),  # 6 CPUs / 2
        ({"CPU": 8.0}, ["--num-workers", "2", "--cpus-per-worker", "2"], 1),
        ({"CPU": 64.0, "GPU": 2.0}, ["--num-workers", "1", "--device", "gpu"], 2),  # the GPUs
        ({"CPU": 64.0}, ["--num-workers", "2-4", "--cpus-per-worker", "8"], 1),  # MAX workers
    ],
)
def test_concurrent_runs_fit_the_cluster(monkeypatch, resources, argv, expected):
    import ray

    from jobs.training.fold_runs import concurrent_runs

    monkeypatch.setattr(ray, "cluster_resources", lambda: resources)
    cfg = parse_args(["--data", "/d", "--folds", "3", *argv])
    assert concurrent_runs(cfg, cfg.folds) == expected
