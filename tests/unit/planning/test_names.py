"""Groups of near-duplicate names, on generated name lists with known sequences."""

from __future__ import annotations

import uuid

from jobs.planning.names import block_size, group_names, split_name, summarise_groups


def camvid_like() -> list[str]:
    """Four sequences of frames (steps 1, 2 and 30), as CamVid names them."""
    return (
        [f"0001TP_{n:06d}" for n in range(6690, 10380, 30)]
        + [f"0006R0_f{n:05d}" for n in range(930, 3930, 30)]
        + [f"0016E5_{n:05d}" for n in range(7959, 8560, 2)]
        + [f"Seq05VD_f{n:05d}" for n in range(0, 171)]
    )


def test_split_name():
    assert split_name("0016E5_07959") == ("0016E5_", 7959)
    assert split_name("stack/slice_03") == ("stack/slice_", 3)
    assert split_name("cat") is None


def test_frames_of_a_sequence_group_in_contiguous_blocks_and_never_mix_sequences():
    keys = camvid_like()
    groups = group_names(keys)
    members: dict[str, list[str]] = {}
    for key, label in groups.items():
        members.setdefault(label, []).append(key)
    assert 20 <= len(members) <= 30  # about TARGET_GROUPS, whatever the sequences' steps
    order = {key: i for i, key in enumerate(sorted(keys))}
    for label, names in members.items():
        assert len({split_name(n)[0] for n in names}) == 1, label  # one sequence per group
        positions = sorted(order[n] for n in names)
        assert positions == list(range(positions[0], positions[-1] + 1)), label  # contiguous
    assert groups["0016E5_07959"] == groups["0016E5_07961"]  # neighbouring frames together


def test_a_single_stack_is_cut_into_blocks_of_neighbouring_slices():
    keys = [f"slice_{i:02d}" for i in range(30)]
    groups = group_names(keys)
    assert groups["slice_00"] == groups["slice_01"] == "slice_00-01"
    assert len(set(groups.values())) == 15
    summary = summarise_groups(keys)
    assert summary["sequences"] == 1 and summary["block"] == 2 and summary["groups"] == 15


def test_a_gap_in_the_numbers_starts_a_new_group():
    keys = [f"run_{n:03d}" for n in [*range(0, 10), *range(500, 510)]]
    groups = group_names(keys, block=100)
    assert groups["run_000"] == groups["run_009"] != groups["run_500"] == groups["run_509"]


def test_names_without_numbers_or_alone_under_their_prefix_are_their_own_group():
    keys = [uuid.UUID(int=i).hex + "x" for i in range(50)] + ["a_1", "b_1"]
    assert all(label == key for key, label in group_names(keys).items())
    summary = summarise_groups(keys)
    assert summary["groups"] == 52 and summary["grouped_names"] == 0
    assert summary["largest_group"] == 1 and summary["examples"] == []


def test_block_size_targets_about_twenty_groups():
    assert block_size(10) == 1 and block_size(40) == 2 and block_size(701) == 36
