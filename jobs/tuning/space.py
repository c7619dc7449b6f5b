"""The search space of `unet-tune`: a small YAML (or JSON) file, checked before any work, and
the default space when no file is given.

A file maps a setting (a flat training or model field, as the train job's flags name it:
`lr`, `base_width`, `class_balance`, `encoder`, ...; or `augment_strength`) to one domain:

    lr: {loguniform: [5.0e-4, 5.0e-3]}
    base_width: {choice: [8, 16, 24]}
    class_balance: {choice: [0, 0.5]}
    augment_strength: {uniform: [0.5, 1.5]}
    encoder: {choice: [unet, resnet18]}

Domains: ``choice: [values]``, ``grid: [values]`` (every value, in order, for every sample),
``uniform: [low, high]``, ``loguniform: [low, high]`` (0 < low), ``randint: [low, high]``
(integers, high excluded), or a plain value (fixed for every trial). `augment_strength` scales
the recipe's photometric and geometric augmentation amounts (`scaled_augmentation`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.training.config import MODEL_FIELDS_FROM_DATA, TrainJobConfig
from unet_core.config import ModelConfig, TrainConfig

AUGMENT_STRENGTH = "augment_strength"
"""The space key that scales the recipe's augmentation amounts (1 = the recipe's own)."""
DOMAINS = ("choice", "grid", "uniform", "loguniform", "randint")
FORMAT_HINT = (
    "write e.g. 'lr: {loguniform: [5.0e-4, 5.0e-3]}' or 'base_width: {choice: [8, 16]}' "
    f"(domains: {', '.join(DOMAINS)}, or a plain value)"
)
NOT_SEARCHABLE = ("epochs", "seed", "val_fraction", *MODEL_FIELDS_FROM_DATA)
"""Settings a search may not vary: the budget ASHA measures in, what makes trials comparable
(the seed and the split), and what the data decide."""
PHOTOMETRIC = ("brightness", "contrast", "channel_gain", "saturation", "gamma", "noise_std")
"""TrainConfig amounts `augment_strength` multiplies (colour and intensity)."""
GEOMETRIC = ("rotate_degrees", "elastic_sigma")
"""TrainConfig amounts `augment_strength` multiplies (shape); the scale range widens about 1."""
_BELOW_ONE = ("brightness", "contrast", "channel_gain", "saturation")  # factors in [1 - x, 1 + x]


class SearchSpaceError(ValueError):
    """A search-space file that cannot be used; the message names the file, the key and the fix."""

    exit_kind = "input"


@dataclass(frozen=True)
class Dimension:
    """One setting of the search and the values it takes."""

    key: str
    """A flat training or model field (as the train job's flags name it), or augment_strength."""
    domain: str
    """choice, grid, uniform, loguniform, randint, or fixed."""
    values: tuple[Any, ...]
    """The choices (choice, grid), (low, high) (uniform, loguniform, randint), or (value,)."""

    def to_tune(self):
        """The Ray Tune domain (`ray.tune.choice`, ...) or the fixed value."""
        from ray import tune

        if self.domain == "fixed":
            return self.values[0]
        if self.domain == "grid":
            return tune.grid_search(list(self.values))
        if self.domain == "choice":
            return tune.choice(list(self.values))
        return getattr(tune, self.domain)(*self.values)

    def describe(self) -> dict[str, Any]:
        return {self.domain: list(self.values)} if self.domain != "fixed" else self.values[0]


@dataclass(frozen=True)
class SearchSpace:
    """The settings a search varies, in the order declared."""

    dimensions: tuple[Dimension, ...]
    """One per key of the file (or of the default space)."""
    source: str = "default"
    """The file it came from, or "default"."""

    def to_tune(self) -> dict[str, Any]:
        """Tuner's param_space."""
        return {d.key: d.to_tune() for d in self.dimensions}

    def describe(self) -> dict[str, Any]:
        """The space as the file would declare it (for --dry-run, the parent run's params)."""
        return {d.key: d.describe() for d in self.dimensions}

    @property
    def grid_size(self) -> int:
        """Trials per sample: the product of the grid dimensions' sizes (1 without any)."""
        return math.prod(len(d.values) for d in self.dimensions if d.domain == "grid")

    def trial_count(self, samples: int) -> int:
        """Trials a search of ``samples`` samples runs (Ray Tune repeats every grid per sample)."""
        return samples * self.grid_size

    def keys(self) -> list[str]:
        return [d.key for d in self.dimensions]


def searchable_keys() -> dict[str, Any]:
    """{key: type} of every setting a space may declare."""
    import typing

    out: dict[str, Any] = {}
    for cls in (TrainConfig, ModelConfig):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name not in NOT_SEARCHABLE:
                out[f.name] = hints[f.name]
    out[AUGMENT_STRENGTH] = float
    return out


def default_space(*, use_gpu: bool, given: dict[str, Any] | None = None) -> SearchSpace:
    """The space without --search-space: lr log-uniform 5e-4..5e-3, base_width among 8/16/24
    on CPU (32/48/64 on GPU), class_balance 0 or 0.5, augment_strength uniform 0.5..1.5; and
    the encoder only when ``given`` names one (`--encoder`: fixed to it)."""
    dims = [
        Dimension("lr", "loguniform", (5e-4, 5e-3)),
        Dimension("base_width", "choice", (32, 48, 64) if use_gpu else (8, 16, 24)),
        Dimension("class_balance", "choice", (0.0, 0.5)),
        Dimension(AUGMENT_STRENGTH, "uniform", (0.5, 1.5)),
    ]
    if given and given.get("encoder"):
        dims.append(Dimension("encoder", "fixed", (given["encoder"],)))
    return SearchSpace(tuple(dims))


def load_space(path: str | Path) -> SearchSpace:
    """Read and check a search-space file; every problem at once, each naming its key."""
    from jobs.common.cli import _parse_file

    path = Path(path)
    if not path.is_file():
        raise SearchSpaceError(f"--search-space {path} does not exist; {FORMAT_HINT}")
    try:
        data = _parse_file(path)
    except (ValueError, OSError) as exc:
        raise SearchSpaceError(f"--search-space {path} cannot be read: {exc}") from exc
    return parse_space(data, source=str(path))


def parse_space(data: Any, *, source: str = "the search space") -> SearchSpace:
    """A `SearchSpace` from the parsed file; raises SearchSpaceError listing every problem."""
    if not isinstance(data, dict) or not data:
        raise SearchSpaceError(
            f"{source}: expected a mapping of settings to domains, got {data!r}; {FORMAT_HINT}"
        )
    known = searchable_keys()
    dims, problems = [], []
    for raw_key, spec in data.items():
        key = str(raw_key).replace("-", "_")
        if key in NOT_SEARCHABLE:
            problems.append(
                f"{key!r} cannot be searched (the search fixes {', '.join(NOT_SEARCHABLE)}); "
                f"set it with --{key.replace('_', '-')} instead"
            )
            continue
        if key not in known:
            problems.append(
                f"{key!r} is not a training or model setting; searchable keys: {sorted(known)}"
            )
            continue
        try:
            dims.append(_dimension(key, spec, known[key]))
        except ValueError as exc:
            problems.append(f"{key!r}: {exc}")
    if problems:
        raise SearchSpaceError(f"{source}: " + "; ".join(problems))
    return SearchSpace(tuple(dims), source=source)


def _dimension(key: str, spec: Any, tp: Any) -> Dimension:
    from jobs.common.cli import base_type, coerce

    number = _yaml_number if base_type(tp)[0] in (int, float) else _as_is  # text stays text

    if not isinstance(spec, dict):
        return Dimension(key, "fixed", (coerce(key, number(spec), tp),))
    if len(spec) != 1 or next(iter(spec)) not in DOMAINS:
        raise ValueError(
            f"expected one domain of {', '.join(DOMAINS)}, got {spec!r}; {FORMAT_HINT}"
        )
    domain, values = next(iter(spec.items()))
    numeric = domain not in ("choice", "grid")
    if not isinstance(values, list) or not values:
        raise ValueError(f"{domain} takes a non-empty list, got {values!r}")
    values = [coerce(key, number(v), tp) for v in values]
    if numeric:
        if len(values) != 2 or not all(isinstance(v, int | float) for v in values):
            raise ValueError(f"{domain} takes [low, high] numbers, got {values}")
        low, high = values
        if not low < high:
            raise ValueError(f"{domain} needs low < high, got [{low}, {high}]")
        if domain == "loguniform" and low <= 0:
            raise ValueError(f"loguniform needs 0 < low, got [{low}, {high}]; use uniform")
        if domain == "randint" and not all(isinstance(v, int) for v in values):
            raise ValueError(f"randint takes integers [low, high), got {values}")
    for value in values if not numeric else ():  # every choice must make a valid config
        _check_value(key, value)
    if numeric:
        for value in values[:1] if domain == "randint" else values:
            _check_value(key, value)
    return Dimension(key, domain, tuple(values))


def _as_is(value: Any) -> Any:
    return value


def _yaml_number(value: Any) -> Any:
    """YAML 1.1 reads 5e-4 (no dot) as a string: such a string as its number."""
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            return value
    return value


def _check_value(key: str, value: Any) -> None:
    """Raise ValueError when ``key: value`` makes no valid training config."""
    if key == AUGMENT_STRENGTH:
        if not value >= 0:
            raise ValueError(f"augment_strength is a factor >= 0, got {value}")
        return
    try:
        TrainJobConfig.from_flat({key: value})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"value {value!r} is refused ({exc})") from None


def scaled_augmentation(train: TrainConfig, strength: float) -> dict[str, Any]:
    """The TrainConfig augmentation fields scaled by ``strength`` (0 = none of these, 1 = the
    recipe's amounts): photometric and geometric amounts multiplied, the scale range widened or
    narrowed about 1; amounts kept inside their valid ranges. Probabilities are left as they are."""
    out: dict[str, Any] = {}
    for name in PHOTOMETRIC + GEOMETRIC:
        value = getattr(train, name) * strength
        if name in _BELOW_ONE:
            value = min(value, 0.95)
        if name == "rotate_degrees":
            value = min(value, 180.0)
        out[name] = value
    out["scale_min"] = max(0.05, 1.0 - (1.0 - train.scale_min) * strength)
    out["scale_max"] = 1.0 + (train.scale_max - 1.0) * strength
    return out


def trial_config(base: TrainJobConfig, values: dict[str, Any], *, run_name: str) -> TrainJobConfig:
    """The train job's config of one trial: ``base`` with the trial's sampled ``values``
    (augment_strength applied to the base recipe's amounts) and its own run name."""
    flat = base.to_flat()
    values = dict(values)
    strength = values.pop(AUGMENT_STRENGTH, None)
    flat.update(values)
    if strength is not None:
        flat.update(scaled_augmentation(base.train, float(strength)))
    flat["run_name"] = run_name
    return dataclasses.replace(TrainJobConfig.from_flat(flat), given=base.given)
