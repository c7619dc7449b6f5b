"""Command-line flags and config files from typed dataclass fields: shared by every job.

Each field's help text is its attribute docstring (the string literal under it), and its
argparse type comes from its annotation (``X``, ``X | None``, or a union of plain types
such as ``int | str``, which takes the first member that fits). A config file (JSON, or YAML
when PyYAML is installed) sets the same fields by name, checked against their types.

The spellings of earlier releases that still work live here too (`OldSpelling`: a hidden flag
and a config-file key, each printing a one-line notice that names the new spelling); the
parsers of the shared flag vocabulary (docs/flags.md) are in `jobs.common.vocabulary`.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import json
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NONE_WORDS = ("none", "null", "")
"""Flag values that mean None for an optional field."""


# --- spellings of earlier releases ---------------------------------------------------------------


@dataclass(frozen=True)
class OldSpelling:
    """A flag (and its config-file key) of an earlier release that still works: parsed by a
    hidden flag, turned into the new fields, with a notice on stderr naming the new spelling."""

    flag: str
    """The old flag, e.g. --min-actors."""
    new: str
    """The new spelling the notice names, e.g. --num-workers MIN-MAX."""
    convert: Callable[[Any, dict[str, Any]], dict[str, Any]]
    """(old value, every old value given beside it by key) -> new field values."""
    kind: type = str
    """Type of the flag's value; bool: a flag without a value that stores ``const``."""
    const: Any = None
    """The value a flag without a value stands for (kind bool)."""
    key: str | None = ""
    """Its config-file key; "" = the flag's name (min_actors), None = none (--no-gpu)."""
    new_key: str = ""
    """The new spelling in a config file; "" = ``new`` as keys (num_workers: MIN-MAX)."""

    @property
    def file_key(self) -> str | None:
        return self.flag[2:].replace("-", "_") if self.key == "" else self.key

    @property
    def dest(self) -> str:
        return "old" + self.flag


def _as_keys(new: str) -> str:
    """A new spelling as config-file keys: "--num-workers MIN-MAX" -> "num_workers: MIN-MAX"."""
    words, parts = new.split(), []
    for i, word in enumerate(words):
        if word.startswith("--"):
            value = words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("-") else ""
            parts.append(f"{word[2:].replace('-', '_')}: {value}".rstrip(": "))
    return ", ".join(parts)


def notice(old: str, new: str) -> None:
    """The one line on stderr that an old spelling prints."""
    print(f"notice: {old} is deprecated: use {new}", file=sys.stderr, flush=True)


def add_old_flags(parser: argparse.ArgumentParser, old: Sequence[OldSpelling]) -> None:
    """Hidden flags (not in --help) for the old spellings."""
    for spelling in old:
        if spelling.kind is bool:
            parser.add_argument(
                spelling.flag,
                dest=spelling.dest,
                action="store_const",
                const=spelling.const,
                default=argparse.SUPPRESS,  # absent: no notice
                help=argparse.SUPPRESS,
            )
        else:
            parser.add_argument(
                spelling.flag,
                dest=spelling.dest,
                type=spelling.kind,
                default=argparse.SUPPRESS,
                help=argparse.SUPPRESS,
            )


def take_old_flags(values: dict[str, Any], old: Sequence[OldSpelling]) -> dict[str, Any]:
    """``values`` of a parsed command line with its old flags turned into new fields (a new
    flag given beside its old spelling wins), one notice per old flag given."""
    given = {s: values.pop(s.dest) for s in old if s.dest in values}
    by_key = {s.file_key or s.flag: value for s, value in given.items()}
    converted: dict[str, Any] = {}
    for spelling, value in given.items():
        notice(spelling.flag, spelling.new)
        converted.update(spelling.convert(value, by_key))
    return {**converted, **values}


def take_old_keys(
    values: dict[str, Any], old: Sequence[OldSpelling], path: Path | str
) -> dict[str, Any]:
    """A config file's flat ``values`` with its old keys turned into new fields; an old key
    set to null (a file the old `to_flat` wrote: use_gpu: null) leaves the default."""
    keys = {s.file_key: s for s in old if s.file_key}
    given = {k: values.pop(k) for k in list(values) if k in keys}
    converted: dict[str, Any] = {}
    for key, value in list(given.items()):
        spelling = keys[key]
        notice(f"{path}: key {key}", spelling.new_key or _as_keys(spelling.new))
        if value is None:
            del given[key]
        else:
            given[key] = coerce(key, value, spelling.kind)
    for key, value in given.items():
        converted.update(keys[key].convert(value, given))
    return {**converted, **values}


def command_name(script: str) -> str:
    """The job's name in usage and error lines, as the user ran it: the console command
    (``unet-train``) or the script (``jobs/train.py``, also under ``ray job submit``)."""
    invoked = Path(sys.argv[0]).name
    return invoked if invoked.startswith("unet-") else script


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal under each field), base classes first."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def base_type(tp: Any) -> tuple[type, bool]:
    """(underlying type, optional?) of `X` or `X | None`."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return tp, False


def union_members(tp: Any) -> tuple[type, ...]:
    """The member types of a union of plain types such as ``int | str``, else ``(tp,)``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def converter(
    tp: type, optional: bool, none_words: tuple[str, ...] = NONE_WORDS
) -> Callable[[str], Any]:
    """argparse ``type=``: ``tp(text)``, or None for ``none_words`` when the field is optional."""
    members = union_members(tp)

    def convert(text: str) -> Any:
        if optional and text.lower() in none_words:
            return None
        for member in members[:-1]:  # `int | str`: the first type that takes the text
            try:
                return member(text)
            except ValueError:
                pass
        return members[-1](text)

    # argparse names the type in its error messages
    convert.__name__ = " or ".join(m.__name__ for m in members)
    return convert


def add_field_flag(
    group: Any,
    name: str,
    tp: Any,
    text: str,
    *,
    metavar: str,
    none_words: tuple[str, ...] = NONE_WORDS,
) -> None:
    """``--field-name`` for a field: ``--x/--no-x`` for booleans, else a typed value."""
    flag = "--" + name.replace("_", "-")
    base, optional = base_type(tp)
    if base is bool:
        group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, help=text)
    else:
        group.add_argument(
            flag, dest=name, type=converter(base, optional, none_words), metavar=metavar, help=text
        )


def coerce(name: str, value: Any, tp: Any) -> Any:
    """Check and convert a value read from a config file to the field's type."""
    base, optional = base_type(tp)
    if value is None:
        if optional:
            return None
        raise ValueError(f"config key {name!r} must not be null")
    members = union_members(base)
    if len(members) > 1:  # `int | str`: the first type the value is
        for member in members:
            try:
                return coerce(name, value, member)
            except ValueError:
                pass
        kinds = " or ".join(m.__name__ for m in members)
        raise ValueError(f"config key {name!r} must be {kinds}, got {value!r}")
    if base is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"config key {name!r} must be true or false, got {value!r}")
    if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if base is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if base is str and isinstance(value, str):
        return value
    raise ValueError(f"config key {name!r} must be {base.__name__}, got {value!r}")


def _parse_file(path: Path) -> Any:
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:
            raise ValueError(
                f"{path}: reading YAML needs PyYAML (pip install pyyaml); or use a .json file"
            ) from exc
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML ({exc})") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); YAML files need .yaml/.yml") from exc


JOB_SECTIONS = ("train", "model", "evaluate", "segment", "export", "report")
"""Sections of a recipe file (configs/*.yaml): `train:` and `model:` are read by jobs/train.py,
`evaluate:` by jobs/evaluate.py, `segment:` by jobs/segment.py, `export:` by jobs/export.py,
`report:` by jobs/report.py; each job skips the others'. A key of that name whose value is not a
mapping is a field (segment's flat `report: false`)."""


def load_config_file(
    path: str | Path,
    field_types: Mapping[str, Any],
    *,
    sections: tuple[str, ...] = (),
    prog: str = "the job",
    old: Sequence[OldSpelling] = (),
) -> dict[str, Any]:
    """Flat field values from a JSON or YAML file: top-level keys, and the keys of the mappings
    under ``sections`` (e.g. `train:`, `model:`); the other jobs' sections (`JOB_SECTIONS`) are
    skipped. Unknown keys and values of the wrong type name the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    data = _parse_file(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of field names to values")
    flat: dict[str, Any] = {}
    for key, value in data.items():
        is_section = key in JOB_SECTIONS and (isinstance(value, dict) or key not in field_types)
        if is_section and not isinstance(value, dict):
            raise ValueError(f"{path}: section {key!r} must be a mapping of field names to values")
        if is_section and key in sections:
            flat.update(value)
        elif not is_section:
            flat[key] = value
    flat = {k.replace("-", "_"): v for k, v in flat.items()}
    try:
        flat = take_old_keys(flat, old, path)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    unknown = sorted(set(flat) - set(field_types))
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; run {prog} --help for the fields")
    try:
        return {k: coerce(k, v, field_types[k]) for k, v in flat.items()}
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def add_config_flag(parser: argparse.ArgumentParser, section: str, example: str) -> None:
    """`--config FILE`: the job's fields from a JSON/YAML file (flat, or under `section:`)."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"JSON or YAML file with any of the fields below (flat names, e.g. {example}, or "
        f"under its {section}: section, as in configs/*.yaml); flags given on the command line "
        "override it",
    )


def parse_fields(
    cls: type,
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    *,
    section: str,
    old: Sequence[OldSpelling] = (),
) -> Any:
    """Flags (and `--config FILE`'s `section`) into the dataclass `cls`: defaults < config
    file < command line. The parser's defaults are SUPPRESS (absent flags stay absent, so the
    file can set them). ``old``: spellings of earlier releases, as flags and as file keys.
    Invalid values exit 2 with the reason (argparse's error line)."""
    add_old_flags(parser, old)
    values = vars(parser.parse_args(argv))
    config_path = values.pop("config", None)
    try:
        values = take_old_flags(values, old)
        if config_path:
            hints = typing.get_type_hints(cls)
            file_values = load_config_file(
                config_path, hints, sections=(section,), prog=parser.prog, old=old
            )
            values = {**file_values, **values}
        return cls(**values)
    except ValueError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits
