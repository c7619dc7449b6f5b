"""The exit-code table and the last JSON line every job prints."""

from __future__ import annotations

import json
import math

import pytest

from jobs.common import exits


class _Paths(ValueError):
    exit_kind = "paths"


class _TooManyFailed(RuntimeError):
    exit_kind = "criterion"


def _last_line(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_nan_and_infinity_become_null_in_strict_json(capsys):
    exits.print_json({"val_miou": math.nan, "per_class": {"a": [1.0, -math.inf]}, "n": 3})
    line = capsys.readouterr().out.strip()
    assert "NaN" not in line and "Infinity" not in line
    assert json.loads(line) == {"val_miou": None, "per_class": {"a": [1.0, None]}, "n": 3}


@pytest.mark.parametrize(
    ("exc", "kind", "code"),
    [
        (_Paths("--output /tmp/x is local"), "paths", 2),
        (ValueError("--tile-size must be > 0"), "input", 2),
        (FileNotFoundError("no such folder"), "input", 2),
        (_TooManyFailed("3 of 4 failed"), "criterion", 1),
        (RuntimeError("boom"), "unexpected", 3),
        (KeyError("x"), "unexpected", 3),
    ],
)
def test_each_exception_gets_its_kind_and_code(capsys, exc, kind, code):
    def run(cfg):
        raise exc

    assert exits.run_job("segment", lambda: None, run) == code
    line = _last_line(capsys)
    assert line["kind"] == kind and line["exit_code"] == code
    assert str(exc).strip("'") in line["error"]


def test_a_summary_and_its_code_pass_through(capsys):
    assert exits.run_job("evaluate", lambda: 1, lambda cfg: ({"ok": cfg}, 1)) == 1
    assert _last_line(capsys) == {"ok": 1}


def test_usage_errors_print_a_json_line_and_help_does_not(capsys):
    def bad_flag():
        raise SystemExit(2)

    def help_():
        raise SystemExit(0)

    assert exits.run_job("train", bad_flag, lambda cfg: ({}, 0)) == 2
    assert _last_line(capsys)["kind"] == "usage"
    assert exits.run_job("train", help_, lambda cfg: ({}, 0)) == 0
    assert capsys.readouterr().out == ""
