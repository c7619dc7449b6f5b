"""One flag vocabulary across the jobs (docs/flags.md): every old spelling still parses to the
same config as its new one, as a flag and as a config-file key, with a one-line notice naming
the new spelling; `--help` lists only the new spellings; the default of --log-to-mlflow."""

from __future__ import annotations

import re

import pytest
import yaml

from jobs import demo
from jobs.exporting.config import ExportConfig
from jobs.exporting.config import build_parser as export_parser
from jobs.inference.config import EvaluateConfig, SegmentConfig, parse_config
from jobs.inference.config import build_parser as batch_parser
from jobs.training.config import build_parser as train_parser
from jobs.training.config import parse_args as parse_train

SEGMENT = ["--input", "in", "--output", "out"]
EVALUATE = ["--data", "labelled"]


def segment(argv: list[str]) -> SegmentConfig:
    return parse_config(SegmentConfig, [*SEGMENT, *argv], prog="segment", description="")


def evaluate(argv: list[str]) -> EvaluateConfig:
    return parse_config(EvaluateConfig, [*EVALUATE, *argv], prog="evaluate", description="")


def train(argv: list[str]):
    return parse_train(["--data", "/d", *argv])


def notices(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("notice:")]


@pytest.mark.parametrize(
    ("old", "new", "notice"),
    [
        (["--use-gpu"], ["--device", "gpu"], "--use-gpu is deprecated: use --device gpu"),
        (["--no-use-gpu"], ["--device", "cpu"], "--no-use-gpu is deprecated: use --device cpu"),
        (["--no-gpu"], ["--device", "cpu"], "--no-gpu is deprecated: use --device cpu"),
    ],
)
def test_train_old_flags(old, new, notice, capsys):
    assert train(old) == train(new)
    assert notices(capsys) == [f"notice: {notice}"]


def test_train_max_bad_pairs_keeps_its_count(capsys):
    cfg = train(["--max-bad-pairs", "3"])
    assert cfg.allowed_bad_pairs(10) == cfg.allowed_bad_pairs(100_000) == 3
    assert notices(capsys) == ["notice: --max-bad-pairs is deprecated: use --max-failed-fraction X"]
    assert train(["--max-failed-fraction", "0.3"]).allowed_bad_pairs(10) == 3


BATCH_CASES = [
    (
        ["--min-actors", "2", "--max-actors", "8"],
        ["--num-workers", "2-8"],
        [
            "--min-actors is deprecated: use --num-workers MIN-MAX",
            "--max-actors is deprecated: use --num-workers MIN-MAX",
        ],
    ),
    (["--max-actors", "4"], ["--num-workers", "0-4"], None),  # smallest pool: automatic
    (["--min-actors", "3"], ["--num-workers", "3"], None),
    (
        ["--num-gpus-per-actor", "0"],
        ["--device", "cpu"],
        [
            "--num-gpus-per-actor is deprecated: use --device gpu --gpus-per-worker X "
            "(0: --device cpu)"
        ],
    ),  # fmt: skip
    (["--num-gpus-per-actor", "0.5"], ["--device", "gpu", "--gpus-per-worker", "0.5"], None),
    (
        ["--num-cpus-per-actor", "2"],
        ["--cpus-per-worker", "2"],
        ["--num-cpus-per-actor is deprecated: use --cpus-per-worker X"],
    ),
]


@pytest.mark.parametrize("job", [segment, evaluate])
@pytest.mark.parametrize(("old", "new", "expected"), BATCH_CASES)
def test_batch_job_old_flags(job, old, new, expected, capsys):
    assert job(old) == job(new)
    found = notices(capsys)
    assert len(found) == len([f for f in old if f.startswith("--")])
    if expected:
        assert found == [f"notice: {text}" for text in expected]


def test_evaluate_report_is_the_scores_file(capsys):
    old = evaluate(["--report", "eval/scores.parquet"])
    assert old == evaluate(["--scores-file", "eval/scores.parquet"])
    assert old.scores_file == "eval/scores.parquet"
    assert notices(capsys) == ["notice: --report is deprecated: use --scores-file PATH"]
    # segment's --report is the HTML QC report, not an old spelling
    assert segment(["--no-report"]).report is False and not notices(capsys)


def test_new_spelling_wins_over_its_old_one(capsys):
    assert segment(["--num-workers", "5", "--max-actors", "2"]).num_workers == 5
    assert train(["--use-gpu", "--device", "cpu"]).device == "cpu"


def test_new_spellings_print_no_notice(capsys):
    train(["--device", "gpu", "--gpus-per-worker", "0.5", "--max-failed-fraction", "0.1"])
    segment(["--device", "cpu", "--num-workers", "1-4", "--cpus-per-worker", "2"])
    evaluate(["--scores-file", "s.parquet", "--num-workers", "2"])
    assert notices(capsys) == []


def test_demo_out_is_the_output(capsys):
    assert demo.parse_args(["--out", "x"])["output"] == "x"
    assert notices(capsys) == ["notice: --out is deprecated: use --output DIR"]
    assert demo.parse_args(["--output", "y"])["output"] == "y" and not notices(capsys)
    assert "output" not in demo.parse_args([])  # the default folder is main's


def write(tmp_path, data: dict):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_old_config_keys_still_work(tmp_path, capsys):
    old = write(tmp_path, {"segment": {"min_actors": 1, "max_actors": 3, "num_gpus_per_actor": 0,
                                       "num_cpus_per_actor": 2}})  # fmt: skip
    new = write(tmp_path / "..", {"segment": {"num_workers": "1-3", "device": "cpu",
                                              "cpus_per_worker": 2}})  # fmt: skip
    assert segment(["--config", old]) == segment(["--config", new])
    found = notices(capsys)
    assert f"notice: {old}: key min_actors is deprecated: use num_workers: MIN-MAX" in found
    assert (
        f"notice: {old}: key num_gpus_per_actor is deprecated: use device: gpu, "
        "gpus_per_worker: X (0: device: cpu)" in found
    )
    assert f"notice: {old}: key num_cpus_per_actor is deprecated: use cpus_per_worker: X" in found
    assert len(found) == 4

    scores = write(tmp_path, {"evaluate": {"report": "s.parquet"}})
    assert evaluate(["--config", scores]).scores_file == "s.parquet"
    assert notices(capsys) == [f"notice: {scores}: key report is deprecated: use scores_file: PATH"]

    trained = write(tmp_path, {"train": {"use_gpu": False, "max_bad_pairs": 2}})
    cfg = parse_train(["--data", "/d", "--config", trained])
    assert cfg.device == "cpu" and cfg.allowed_bad_pairs(1000) == 2
    assert len(notices(capsys)) == 2

    # a flat config an earlier release wrote (TrainJobConfig.to_flat): null = the default
    written = write(tmp_path, {"use_gpu": None, "max_bad_pairs": 0, "epochs": 2})
    cfg = parse_train(["--data", "/d", "--config", written])
    assert cfg.device == "auto" and cfg.allowed_bad_pairs(1000) == 0 and cfg.train.epochs == 2


def test_old_config_key_values_are_checked(tmp_path, capsys):
    path = write(tmp_path, {"segment": {"max_actors": "many"}})
    with pytest.raises(SystemExit) as exit_info:
        segment(["--config", path])
    assert exit_info.value.code == 2
    assert "'max_actors' must be int" in capsys.readouterr().err


OLD_FLAGS = {
    "train": ("--use-gpu", "--no-use-gpu", "--no-gpu", "--max-bad-pairs"),
    "batch": ("--min-actors", "--max-actors", "--num-gpus-per-actor", "--num-cpus-per-actor"),
}


def flags_of(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text))


def test_help_lists_only_the_new_spellings():
    helps = {
        "train": train_parser().format_help(),
        "segment": batch_parser(SegmentConfig, prog="s", description="").format_help(),
        "evaluate": batch_parser(EvaluateConfig, prog="e", description="").format_help(),
        "export": export_parser("x", "").format_help(),
    }
    for job, text in helps.items():
        found = flags_of(text)
        assert not found & set(OLD_FLAGS["train"] + OLD_FLAGS["batch"]), job
        assert "--config" in found and "--output" in found or job in ("train", "evaluate")
    for job in ("train", "segment", "evaluate"):
        assert {"--device", "--gpus-per-worker", "--cpus-per-worker", "--num-workers"} <= flags_of(
            helps[job]
        ), job
        assert "--max-failed-fraction" in flags_of(helps[job]), job
    assert "--scores-file" in flags_of(helps["evaluate"])
    assert "--report" not in flags_of(helps["evaluate"])
    assert "--report" in flags_of(helps["segment"])


def test_log_to_mlflow_default_is_one_rule(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def both(**fields) -> tuple[bool, bool]:
        model = fields.pop("model")
        ev = EvaluateConfig(data="d", model=model, **fields)
        ex = ExportConfig(model=model, format="onnx", output="u.onnx", **fields)
        return ev.mlflow_logging, ex.mlflow_logging

    assert both(model="models:/unet@champion") == (True, True)
    assert both(model="runs:/abc/model") == (True, True)
    assert both(model="ckpt/unet.pt") == (False, False)
    assert both(model="ckpt/unet.pt", tracking_uri="http://mlflow:5000") == (True, True)
    assert both(model="models:/unet/3", log_to_mlflow=False) == (False, False)
    assert both(model="ckpt/unet.pt", log_to_mlflow=True) == (True, True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert both(model="ckpt/unet.pt") == (True, True)
    for parser in (
        batch_parser(EvaluateConfig, prog="e", description=""),
        export_parser("x", ""),
    ):
        text = " ".join(parser.format_help().split())
        assert (
            "default: on when a tracking store is named (--tracking-uri or $MLFLOW_TRACKING_URI) "
            "or --model is an MLflow URI (models:/, runs:/), else off" in text
        )


def test_a_recipe_with_a_report_section_serves_every_job(tmp_path):
    from jobs.reporting.config import parse_report_config

    recipe = write(tmp_path, {"segment": {"report": False}, "report": {"report_worst": 3}})
    assert segment(["--config", recipe]).report is False
    assert parse_report_config(["--config", recipe, "--output", "o"], prog="r", description="")
    assert (
        parse_report_config(
            ["--config", recipe, "--output", "o"], prog="r", description=""
        ).report_worst
        == 3
    )
    assert train(["--config", recipe]).data == "/d"  # the other jobs' sections are skipped
    (tmp_path / "flat").mkdir()
    flat = write(tmp_path / "flat", {"report": False})  # segment's own field, flat
    assert segment(["--config", flat]).report is False


def test_demo_hands_its_config_to_train_and_segment(tmp_path, monkeypatch):
    calls = []

    def run_job(script: str, args: list[str]) -> dict:
        calls.append((script, args))
        if script == "segment.py":
            raise SystemExit(0)  # stop before the picture: the commands are what is checked
        return {}

    monkeypatch.setattr(demo, "run_job", run_job)
    monkeypatch.setattr(demo, "make_synthetic_dataset", lambda *a, **k: None)
    with pytest.raises(SystemExit):
        demo.main(["--config", "configs/demo.yaml", "--out", str(tmp_path / "d")])
    recipe = str(demo.JOBS.parent / "configs" / "demo.yaml")
    assert [script for script, _ in calls] == ["train.py", "segment.py"]
    for _, args in calls:
        assert args[args.index("--config") + 1] == recipe
    segment_args = calls[1][1]
    assert segment_args[segment_args.index("--output") + 1] == str(tmp_path / "d" / "segmented")
