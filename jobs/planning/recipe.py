"""A plan as a recipe in the configs/*.yaml format: one section per job (train, model, evaluate,
segment), each value with a one-line comment that says why."""

from __future__ import annotations

from typing import Any

from jobs.planning.plan import Plan

SECTIONS = ("train", "model", "evaluate", "segment")
"""Sections written, in this order (jobs.common.cli.JOB_SECTIONS names who reads which)."""


def scalar(value: Any) -> str:
    """One YAML scalar that PyYAML reads back as the same value (floats keep a dot)."""
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return text.removesuffix("...").strip()


def to_yaml(plan: Plan, *, command: str | None = None) -> str:
    """The recipe's text: the header notes, then each section's `key: value  # why`."""
    lines = [f"# {note}" for note in plan.notes]
    if command:
        lines.append(f"#   {command}")
    lines.append("# Every value is a default: flags given on the command line override it.")
    for section in SECTIONS:
        fields = plan.sections.get(section)
        if not fields:
            continue
        lines.append(f"{section}:")
        width = max(len(k) + len(scalar(c.value)) for k, c in fields.items()) + 4
        for key, choice in fields.items():
            entry = f"  {key}: {scalar(choice.value)}"
            lines.append(f"{entry.ljust(width)}  # {choice.why}")
    return "\n".join(lines) + "\n"
