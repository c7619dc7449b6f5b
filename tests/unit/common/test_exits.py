"""The exit-code table and the last JSON line every job prints."""

from __future__ import annotations

import argparse
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
    out, err = capsys.readouterr()
    line = json.loads(out.strip().splitlines()[-1])
    assert line["kind"] == kind and line["exit_code"] == code
    assert str(exc).strip("'") in line["error"]
    assert f"error: {line['error']}" in err  # the reason on stderr too, logging set up or not


def test_a_declared_kind_is_found_through_the_exceptions_it_caused(capsys):
    """A Ray task's error (or any wrapper) raised from a refusal keeps the refusal's kind."""

    def run(cfg):
        try:
            raise _Paths("--output /tmp/x is local")
        except _Paths as exc:
            raise RuntimeError("the task failed") from exc

    assert exits.run_job("segment", lambda: None, run) == 2
    assert _last_line(capsys)["kind"] == "paths"


def test_a_summary_and_its_code_pass_through(capsys):
    assert exits.run_job("evaluate", lambda: 1, lambda cfg: ({"ok": cfg}, 0)) == 0
    assert _last_line(capsys) == {"ok": 1, "exit_code": 0}


def test_a_failed_criterion_keeps_the_summary_with_its_reason(capsys):
    def run(cfg):
        return exits.criterion_failed({"failed": 3, "failed_fraction": math.nan}, "3 of 4 failed")

    assert exits.run_job("segment", lambda: None, run) == 1
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(line, parse_constant=_refuse) == {
        "failed": 3,
        "failed_fraction": None,
        "error": "3 of 4 failed",
        "kind": "criterion",
        "exit_code": 1,
    }


def _refuse(name: str):
    raise AssertionError(f"not strict JSON: {name}")


@pytest.mark.parametrize(
    ("problems", "code"), [([], 0), (["--data /d does not exist", "no GPU"], 2)]
)
def test_a_dry_run_with_problems_is_refused(capsys, problems, code):
    report = {"dry_run": True, "problems": problems}
    assert exits.run_job("train", lambda: None, lambda cfg: exits.dry_run_result(report)) == code
    line = _last_line(capsys)
    assert line["exit_code"] == code and line["problems"] == problems
    if problems:
        assert line["kind"] == "dry_run" and line["error"] == "; ".join(problems)
    else:
        assert "error" not in line


def test_usage_errors_print_a_json_line_naming_argparses_reason_and_help_does_not(capsys):
    parser = argparse.ArgumentParser(prog="jobs/train.py")
    parser.add_argument("--epochs", type=int)

    assert exits.run_job("train", lambda: parser.parse_args(["--epochs", "x"]), None) == 2
    err = capsys.readouterr()
    line = json.loads(err.out.strip().splitlines()[-1])
    assert line == {
        "error": "jobs/train.py: error: argument --epochs: invalid int value: 'x'",
        "kind": "usage",
        "exit_code": 2,
    }
    assert "usage: jobs/train.py" in err.err  # argparse's own lines still reach stderr
    assert exits.run_job("train", lambda: parser.parse_args(["--help"]), None) == 0
    out = capsys.readouterr().out
    assert "usage:" in out and not out.strip().splitlines()[-1].startswith("{")  # no JSON


def test_too_many_failed_is_over_the_fraction_and_never_at_zero_failures():
    assert not exits.too_many_failed({"failed": 0, "failed_fraction": 0.0}, 0.0)
    assert exits.too_many_failed({"failed": 1, "failed_fraction": 0.1}, 0.0)
    assert not exits.too_many_failed({"failed": 1, "failed_fraction": 0.1}, 0.1)  # at it: ok
    assert exits.too_many_failed({"failed": 2, "failed_fraction": 0.2}, 0.1)
