"""Wording shared by error messages: long lists of files or values cut to their first few."""

from __future__ import annotations

from collections.abc import Iterable

SHOWN = 10
"""Items an error message names before it says how many more there are."""


def shorten(items: Iterable[object], *, limit: int = SHOWN, sep: str = ", ") -> str:
    """``a, b, c ... and 7 more``: the first ``limit`` items, then how many are left out. With
    a line-break ``sep`` (one item per line) the remark gets a line of its own."""
    items = [str(item) for item in items]
    if len(items) <= limit:
        return sep.join(items)
    gap = " " if sep.strip() else sep
    return f"{sep.join(items[:limit])}{gap}... and {len(items) - limit} more"


def shorten_values(values: Iterable[object], *, limit: int = SHOWN) -> str:
    """``[1, 2, 3 ... and 7 more]``: integer values (mask values, class indices) in brackets."""
    return f"[{shorten((int(v) for v in values), limit=limit)}]"
