"""The alias gate on its own: decisions from a comparison, what makes a champion incomparable,
and the one-computation score both versions get (CPU, no Ray, no MLflow)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from jobs.common.pair_scores import GATE_SETTINGS, PairScorer
from jobs.training.champion import ChampionComparison, comparability_problems
from jobs.training.registry import decide_alias
from unet_core.checkpoint import LoadedModel
from unet_core.classes import ClassInfo, ClassMap
from unet_core.config import ModelConfig, PreprocessConfig
from unet_core.metrics import ConfusionMatrix
from unet_core.model import UNet

CLASSES = ClassMap((ClassInfo("background", 0), ClassInfo("cell", 255)))


def compared(ours: float, theirs: float) -> ChampionComparison:
    return ChampionComparison("champion", "3", champion_miou=theirs, candidate_miou=ours, pairs=5)


def test_no_champion_takes_the_alias():
    assert decide_alias(
        ChampionComparison("champion", None), val_miou=0.2, min_miou=0.0, force=False
    ) == (True, "no version held @champion yet")


@pytest.mark.parametrize("force", [False, True])
def test_min_miou_refuses_even_when_forced(force):
    ok, why = decide_alias(compared(0.9, 0.1), val_miou=0.5, min_miou=0.9, force=force)
    assert not ok and "--min-miou 0.9000" in why
    ok, why = decide_alias(compared(0.9, 0.1), val_miou=float("nan"), min_miou=0.0, force=force)
    assert not ok and "--min-miou" in why


def test_the_figures_on_this_split_decide_not_the_workers_val_miou():
    # the workers' val_miou (0.99, on another split's terms) does not matter once compared
    ok, why = decide_alias(compared(0.60, 0.70), val_miou=0.99, min_miou=0.0, force=False)
    assert not ok
    assert "0.6000 is below 0.7000 of version 3 @champion on this run's 5 validation" in why
    assert "--force-alias" in why
    ok, why = decide_alias(compared(0.60, 0.70), val_miou=0.99, min_miou=0.0, force=True)
    assert ok and "forced over 0.7000" in why
    ok, why = decide_alias(compared(0.70, 0.70), val_miou=0.1, min_miou=0.0, force=False)
    assert ok and "not below" in why  # a tie keeps the newer version


def test_a_champion_that_cannot_be_compared_keeps_the_alias_unless_forced():
    refused = ChampionComparison("champion", "3", refused="its classes differ")
    ok, why = decide_alias(refused, val_miou=0.9, min_miou=0.0, force=False)
    assert not ok
    assert "version 3 @champion cannot be compared" in why and "its classes differ" in why
    assert "--force-alias" in why
    ok, why = decide_alias(refused, val_miou=0.9, min_miou=0.0, force=True)
    assert ok and "forced over version 3" in why and "its classes differ" in why
    # a holder nobody scored (log_and_register without a comparison) counts as not compared
    ok, why = decide_alias(ChampionComparison("best", "2"), val_miou=0.9, min_miou=0, force=False)
    assert not ok and "not scored on this run's validation pairs" in why


def test_tags_and_summary_hold_both_figures_or_the_reason():
    done = compared(0.61, 0.72)
    assert done.tags() == {
        "champion_version": "3",
        "champion_val_miou_on_this_split": "0.720000",
        "val_miou_on_this_split": "0.610000",
        "val_pairs_compared": "5",
    }
    assert done.to_dict()["champion_val_mean_iou"] == 0.72 and done.to_dict()["compared"] is True
    refused = ChampionComparison("champion", "3", refused="x" * 900)
    assert refused.tags() == {"champion_version": "3", "champion_not_compared": "x" * 500}
    assert refused.to_dict()["compared"] is False
    assert ChampionComparison("champion", None).tags() == {"champion_version": "none"}


def loaded_model(class_map: ClassMap, channels: int = 3, seed: int = 0) -> LoadedModel:
    torch.manual_seed(seed)
    config = ModelConfig(
        in_channels=channels, num_classes=class_map.num_classes, base_width=4, depth=2
    )
    return LoadedModel(
        model=UNet.from_config(config).eval(),
        model_config=config,
        class_map=class_map,
        preprocess=PreprocessConfig.for_channels(channels),
    )


def test_incomparable_champions_are_named():
    champion = loaded_model(CLASSES)
    assert comparability_problems(champion, CLASSES, 3) == []
    colours = ClassMap((ClassInfo("background", 0, (1, 2, 3)), ClassInfo("cell", 255)))
    assert comparability_problems(champion, colours, 3) == []  # colours do not score
    renamed = ClassMap((ClassInfo("background", 0), ClassInfo("nucleus", 255)))
    (problem,) = comparability_problems(champion, renamed, 3)
    assert "('cell', 255)" in problem and "('nucleus', 255)" in problem
    revalued = ClassMap((ClassInfo("background", 0), ClassInfo("cell", 1)))
    assert "('cell', 1)" in comparability_problems(champion, revalued, 3)[0]
    ignoring = dataclasses.replace(CLASSES, ignore_values=(128,))
    assert (
        "ignored mask values [] differ from this run's [128]"
        in comparability_problems(champion, ignoring, 3)[0]
    )
    (problem,) = comparability_problems(champion, CLASSES, 1)
    assert "3-channel images, this run 1-channel" in problem


def test_the_score_sums_per_image_matrices_of_whole_images_in_fp32():
    loaded = loaded_model(ClassMap((ClassInfo("a", 0), ClassInfo("b", 1), ClassInfo("c", 2))))
    rng = np.random.default_rng(0)
    pairs = [
        (rng.integers(0, 255, (h, w, 3), dtype=np.uint8), rng.integers(0, 3, (h, w)))
        for h, w in [(20, 28), (33, 17), (16, 16)]
    ]
    pairs[1][1][:5] = 255  # ignored pixels are not counted
    expected = ConfusionMatrix(3)
    with torch.inference_mode():
        for image, mask in pairs:
            x = torch.from_numpy(loaded.preprocess.normalize(image))[None]  # (1, C, H, W)
            expected.update(loaded.model(x)[0].argmax(dim=0).numpy(), mask)
    got = PairScorer(loaded, GATE_SETTINGS).score(
        [(image, mask.astype(np.uint8)) for image, mask in pairs]
    )
    np.testing.assert_array_equal(got.matrix, expected.matrix)
    assert got.matrix.sum() == sum(m.size for _, m in pairs) - 5 * 17
