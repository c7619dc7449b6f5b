"""Command-line flags from typed dataclass fields: shared by the train and segment configs.

Each field's help text is its attribute docstring (the string literal under it), and its
argparse type comes from its annotation (``X`` or ``X | None``).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from collections.abc import Callable
from typing import Any

NONE_WORDS = ("none", "null", "")
"""Flag values that mean None for an optional field."""


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


def converter(
    tp: type, optional: bool, none_words: tuple[str, ...] = NONE_WORDS
) -> Callable[[str], Any]:
    """argparse ``type=``: ``tp(text)``, or None for ``none_words`` when the field is optional."""

    def convert(text: str) -> Any:
        if optional and text.lower() in none_words:
            return None
        return tp(text)

    convert.__name__ = tp.__name__  # argparse names the type in its error messages
    return convert
