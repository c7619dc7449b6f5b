"""The plan's rules on hand-made fingerprints: deterministic; the expected direction when the
budget, the device or the image size changes; the augmentation family from the layout and the
channels; class balance and border weights; the recipe's comments and its round trip through
the training job's --config loader."""

from __future__ import annotations

import dataclasses
import re

import pytest
import yaml

from jobs.planning.budget import plan_for_budget
from jobs.planning.fingerprint import (
    ClassSummary,
    Fingerprint,
    LayoutPair,
    NameGroups,
    SizeSummary,
)
from jobs.planning.plan import make_plan
from jobs.planning.recipe import to_yaml
from jobs.planning.rules import Resources, bucket
from jobs.training.config import parse_args
from unet_core.preprocessing import ChannelStats

CPU = Resources(device="cpu", num_workers=2, cpus_per_worker=0.75)
GPU = Resources(device="gpu", num_workers=2, cpus_per_worker=4, gpu_memory_gb=80.0)


def klass(name, fraction, *, area=400.0, touching=0.0, objects=3.0) -> ClassSummary:
    return ClassSummary(
        name=name,
        pixel_fraction=fraction,
        image_fraction=1.0,
        objects_per_image=objects,
        area_median=area,
        area_p5=area / 4,
        area_p95=area * 4,
        area_mean=area,
        touching_fraction=touching,
        mean_row=0.5,
        row_std=0.1,
    )


def fingerprint(
    *, side=512, pairs=100, channels=1, classes=None, layout=False, dtype="uint8"
) -> Fingerprint:
    classes = classes or [klass("background", 0.7), klass("cell", 0.3)]
    stats = ChannelStats(
        channels=channels,
        dtype=dtype,
        bit_depth=8,
        p_low=(0.0,) * channels,
        p_high=(255.0,) * channels,
        mean=(120.0,) * channels,
        std=(40.0,) * channels,
        min=(0.0,) * channels,
        max=(255.0,) * channels,
        images=pairs,
        pixels=pairs * 1024,
    )
    pairs_above = [LayoutPair("sky", "road", 0.98, pairs)] if layout else []
    return Fingerprint(
        root="/data/set",
        pairs=pairs,
        sampled=pairs,
        seed=0,
        sizes=SizeSummary(pairs, side, side, side, side, side, side, 1.0, 1.0, 1.0),
        modes={"L": pairs},
        channels={str(channels): pairs},
        dtypes={dtype: pairs},
        decoded={f"{channels}x{dtype}": pairs},
        intensity=stats,
        classes=classes,
        ignored_fraction=0.0,
        vertical_layout=layout,
        layout=pairs_above,
        name_groups=NameGroups(0.0, 0, 1, pairs, 0, 1, []),
        failures=0,
        failure_examples=[],
    )


def plan(fp=None, *, budget=20.0, res=CPU, step=0.1):
    return plan_for_budget(
        fp or fingerprint(), budget_minutes=budget, resources=res, step_seconds=step
    )


def test_the_same_inputs_give_the_same_plan_and_noise_stays_in_its_bucket():
    fp = fingerprint()
    first = to_yaml(plan(fp))
    assert to_yaml(plan(fingerprint())) == first
    assert bucket(0.100) == bucket(0.104) == bucket(0.097)  # timing noise: the same bucket
    assert to_yaml(plan(fp, step=0.104)) == first
    assert bucket(0.2) != bucket(0.1)


def test_a_larger_budget_buys_more_crops_or_a_wider_model():
    small, large = plan(budget=5), plan(budget=60)
    s, l_ = small.train_values(), large.train_values()
    crops = lambda v: v["epochs"] * v["samples_per_epoch"]  # noqa: E731
    assert crops(l_) > crops(s) or l_["base_width"] > s["base_width"]
    assert l_["base_width"] >= s["base_width"]
    assert crops(l_) > crops(s)
    assert plan(budget=600).train_values()["base_width"] > s["base_width"]  # time for width


def test_a_gpu_gets_larger_crops_or_batches_and_wider_candidates():
    fp = fingerprint(side=1024, pairs=2000)
    cpu, gpu = plan(fp, res=CPU).train_values(), plan(fp, res=GPU, step=0.05).train_values()
    assert gpu["crop_size"] > cpu["crop_size"] and gpu["batch_size"] > cpu["batch_size"]
    assert gpu["base_width"] >= 32
    tight = dataclasses.replace(GPU, gpu_memory_gb=8.0)
    assert plan(fp, res=tight, step=0.05).train_values()["crop_size"] < gpu["crop_size"]


def test_image_size_sets_crop_depth_and_tile():
    small, large = plan(fingerprint(side=64)), plan(fingerprint(side=2048))
    s, l_ = small.train_values(), large.train_values()
    assert s["crop_size"] == 64 and l_["crop_size"] == 256  # the median side, capped on CPU
    assert 64 // 2 ** s["depth"] >= 8 and 64 // 2 ** (s["depth"] + 1) < 8  # the bottleneck
    big_objects = fingerprint(
        side=2048, classes=[klass("background", 0.7, area=200**2), klass("field", 0.3, area=180**2)]
    )
    deep = plan(big_objects).train_values()["depth"]
    assert deep > l_["depth"] == 3  # the receptive field covers twice the objects' side
    assert 256 // 2**deep >= 8  # ... while the bottleneck keeps 8 px
    assert small.values("segment")["tile_size"] == 64  # whole images
    assert large.values("segment")["tile_size"] == 1024  # above the CPU's whole-image side
    assert plan(fingerprint(side=512)).values("evaluate")["tile_size"] == 512


def test_a_vertical_layout_means_no_vertical_flips_and_hflip_tta():
    scene = plan(fingerprint(layout=True, channels=3)).values("train")
    assert scene["vflip"] == 0 and scene["rotate90"] == 0 and scene["hflip"] > 0
    assert plan(fingerprint(layout=True, channels=3)).values("segment")["tta"] == "hflip"
    free = plan(fingerprint(layout=False))
    assert free.values("train")["vflip"] > 0 and free.values("train")["rotate90"] > 0
    assert free.values("evaluate")["tta"] == "dihedral"


def test_the_pretrained_encoder_is_suggested_for_8_bit_rgb_only():
    photo = plan(fingerprint(channels=3)).sections["model"]["encoder"]
    assert photo.value == "unet"  # the timed encoder: the budget holds
    assert "--encoder efficientnet-lite0 --encoder-weights imagenet" in photo.why
    for kind in ({"channels": 1}, {"channels": 4}, {"channels": 3, "dtype": "uint16"}):
        other = plan(fingerprint(**kind)).sections["model"]["encoder"]
        assert other.value == "unet" and "--encoder" not in other.why, kind


def test_colour_jitter_only_for_rgb():
    assert plan(fingerprint(channels=3)).values("train")["saturation"] > 0
    assert plan(fingerprint(channels=3)).values("train")["channel_gain"] > 0
    for channels in (1, 4):
        train = plan(fingerprint(channels=channels)).values("train")
        assert train["saturation"] == 0 and train["channel_gain"] == 0


def test_touching_objects_get_border_weights_suggested_not_set():
    apart = plan().values("train")
    assert apart["border_weight"] == 0
    cells = [klass("membrane", 0.7, area=50000), klass("cell", 0.3, touching=0.8, objects=40)]
    touching = plan(fingerprint(classes=cells))
    assert touching.values("train")["border_weight"] == 0  # the plan trains for pixel metrics
    assert "--border-weight 10 --border-sigma" in to_yaml(touching)
    assert "--border-class 1" in to_yaml(touching)
    specks = [klass("sky", 0.5, area=1, touching=0.98, objects=25), klass("road", 0.5)]
    assert "--border-weight" not in to_yaml(plan(fingerprint(classes=specks)))  # fragments


def test_rare_classes_turn_on_class_balance():
    assert plan().values("train")["class_balance"] == 0
    rare = [klass("road", 0.6), klass("car", 0.35), klass("sign", 0.004)]
    assert plan(fingerprint(classes=rare)).values("train")["class_balance"] > 0


def test_every_value_has_a_reason_and_the_recipe_loads_through_train_config(tmp_path):
    text = to_yaml(plan(fingerprint(layout=True, channels=3)))
    for line in text.splitlines():
        if line.startswith("  "):
            assert re.match(r"^  \w+: \S.*  # \S", line), line
    data = yaml.safe_load(text)
    assert set(data) == {"train", "model", "evaluate", "segment"}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    cfg = parse_args(["--config", str(recipe), "--data", "/data/set", "--epochs", "3"])
    assert cfg.train.epochs == 3  # a flag overrides the recipe
    assert cfg.train.crop_size == data["train"]["crop_size"]
    assert cfg.train.lr == pytest.approx(data["train"]["lr"])
    assert cfg.model.base_width == data["model"]["base_width"]


def test_measured_times_reach_the_plan():
    fp = fingerprint()
    fast = make_plan(fp, budget_minutes=20, resources=CPU, step_seconds=[0.05, 0.1, 0.2])
    slow = make_plan(fp, budget_minutes=20, resources=CPU, step_seconds=[0.5, 1.0, 2.0])
    assert fast.step_seconds[16] == bucket(0.05)
    assert (
        fast.train_values()["samples_per_epoch"] * fast.train_values()["epochs"]
        > slow.train_values()["samples_per_epoch"] * slow.train_values()["epochs"]
    )


def test_timing_candidates_runs_training_steps_at_the_planned_crop(monkeypatch):
    from jobs.planning import steptime

    small = steptime.Candidate(8, 2, 32, 2, 1, 2, "group")
    monkeypatch.setattr(steptime, "SECONDS_PER_CANDIDATE", {"cpu": 0.0, "gpu": 0.0})
    timed = steptime.time_candidates([dataclasses.asdict(small)], "cpu", "off")
    assert timed["gpu_memory_gb"] is None and timed["seconds"][0] > 0
    # every crop is timed as planned (no scaling by pixels) and the loop's overhead added
    from unet_core.model import UNet

    shapes, forward = [], UNet.forward
    monkeypatch.setattr(
        UNet, "forward", lambda m, x: shapes.append(tuple(x.shape)) or forward(m, x)
    )
    clock = iter(range(1000))  # every step takes 1 s
    monkeypatch.setattr(steptime.time, "perf_counter", lambda: float(next(clock)))
    both = [dataclasses.asdict(small), dataclasses.asdict(dataclasses.replace(small, crop_size=48))]
    overhead = steptime.TRAINING_OVERHEAD
    assert steptime.time_candidates(both, "cpu", "off")["seconds"] == [overhead, overhead]
    assert {s[-2:] for s in shapes} == {(32, 32), (48, 48)}


def test_a_size_that_ran_out_of_memory_is_no_candidate():
    fp = fingerprint(side=1024, pairs=2000)
    out_of_memory = float("inf")
    planned = make_plan(
        fp, budget_minutes=600, resources=GPU, step_seconds=[0.1, 0.2, out_of_memory]
    )
    assert planned.train_values()["base_width"] == 48  # the widest that fits
    with pytest.raises(ValueError, match="no candidate size fits a gpu worker"):
        make_plan(fp, budget_minutes=60, resources=GPU, step_seconds=[out_of_memory] * 3)


@pytest.mark.parametrize(
    "argv",
    [["--plan", "auto"], ["--budget-minutes", "5"], ["--plan", "best", "--budget-minutes", "5"],
     ["--plan", "auto", "--budget-minutes", "0"]],
)  # fmt: skip
def test_train_refuses_a_plan_without_a_budget_and_the_reverse(argv, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--data", "/data/set", *argv])
    assert "--plan auto and --budget-minutes M (> 0) go together" in capsys.readouterr().err


def test_train_plan_auto_knows_which_fields_were_given(tmp_path):
    recipe = tmp_path / "given.yaml"
    recipe.write_text("train:\n  lr: 0.01\nmodel:\n  depth: 3\n")
    cfg = parse_args(["--config", str(recipe), "--data", "/d", "--plan", "auto",
                      "--budget-minutes", "5", "--epochs", "4"])  # fmt: skip
    assert {"lr", "depth", "epochs", "data", "plan"} <= set(cfg.given)
    assert "crop_size" not in cfg.given and "base_width" not in cfg.given


def test_a_step_waits_for_its_batch_on_cpu(monkeypatch):
    from jobs.planning import steptime
    from jobs.planning.budget import data_sample

    sample = data_sample(fingerprint())
    # the planned augmentation and border weights are what the batches are timed with
    assert (
        sample.train["hflip"]
        == make_plan(
            fingerprint(), budget_minutes=20, resources=CPU, step_seconds=[0.1, 0.2, 0.4]
        ).train_values()["hflip"]
    )
    small = steptime.Candidate(8, 2, 32, 2, sample.channels, sample.num_classes, "group")
    monkeypatch.setattr(steptime, "SECONDS_PER_CANDIDATE", {"cpu": 0.0, "gpu": 0.0})
    made = []
    monkeypatch.setattr(
        steptime, "time_batches", lambda s, crop, batch: made.append((crop, batch)) or 0.5
    )
    clock = iter(range(1000))  # every model step takes 1 s
    monkeypatch.setattr(steptime.time, "perf_counter", lambda: float(next(clock)))
    timed = steptime.time_candidates(
        [dataclasses.asdict(small)], "cpu", "off", dataclasses.asdict(sample)
    )
    # model (with the loop's overhead) + batch on the same CPUs
    assert made == [(32, 2)] and timed["seconds"] == [steptime.TRAINING_OVERHEAD + 0.5]


def test_making_a_batch_runs_the_planned_augmentation():
    from jobs.planning import steptime
    from jobs.planning.budget import data_sample

    sample = dataclasses.replace(data_sample(fingerprint()), height=40, width=48)
    assert steptime.time_batches(sample, crop=32, batch=2) > 0


def test_timing_tasks_share_a_node_as_the_workers_will(monkeypatch):
    import ray

    from jobs.planning import steptime

    nodes = [{"Alive": True, "Resources": {"CPU": 2.0}}, {"Alive": False, "Resources": {"CPU": 64}}]
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    assert steptime.sharing_workers(2, 1.0) == 2
    assert steptime.sharing_workers(4, 1.0) == 2  # two fit on the largest alive node
    assert steptime.sharing_workers(2, 4.0) == 1


def test_the_plan_groups_neighbouring_names_only_when_they_share_groups():
    from jobs.planning.fingerprint import NameGroups

    frames = NameGroups(1.0, 1, 4, 19, 76, 4, ["0016E5_07959-07965"])
    grouped = dataclasses.replace(fingerprint(), name_groups=frames)
    values = make_plan(grouped, budget_minutes=20, resources=CPU, step_seconds=[0.1, 0.2, 0.4])
    assert values.train_values()["group_by"] == "names"
    assert "group_by: names" in to_yaml(values)
    slices = NameGroups(1.0, 1, 1, 20, 0, 1, [])  # every slice its own group
    alone = dataclasses.replace(fingerprint(), name_groups=slices)
    plan = make_plan(alone, budget_minutes=20, resources=CPU, step_seconds=[0.1, 0.2, 0.4])
    assert "group_by" not in plan.train_values()


def test_many_classes_get_a_few_features_each_before_more_steps():
    two = plan(step=0.7).train_values()
    assert two["base_width"] == 16  # 2 classes: the widest with 2,000 steps
    scene = [klass(f"c{i}", 1 / 11) for i in range(11)]
    many = plan(fingerprint(classes=scene), step=0.7)
    assert many.train_values()["base_width"] == 24  # >= 2 x 11 features, though fewer steps
    assert ">= 22 (2 features x 11 classes)" in to_yaml(many)
    classes40 = [klass(f"c{i}", 1 / 40) for i in range(40)]
    assert plan(fingerprint(classes=classes40), step=0.7).train_values()["base_width"] == 32
