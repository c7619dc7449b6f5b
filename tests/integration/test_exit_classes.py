"""Every job into every exit class it can reach, its last stdout line read as strict JSON.

The table (docs/flags.md): 0 done; 1 the job ran and failed its own criterion; 2 refused before
any work (usage, a missing path, a bad model or tracking URI, no CUDA for --device gpu); 3 an
unexpected failure (injected here: an internal function raises RuntimeError), its traceback on
stderr only at --log-level DEBUG. Most runs call `main(argv)` in-process; a few run the script
(the real exit code of the process).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from jobs import demo, evaluate, export, report, segment, train
from tests.integration.inference.helpers import make_checkpoint
from tests.support import REPO_ROOT
from unet_core.synthetic import make_synthetic_dataset

pytestmark = pytest.mark.integration

TRAIN = ["--epochs", "1", "--num-workers", "1", "--base-width", "4", "--depth", "2",
         "--norm", "group", "--batch-size", "4"]  # fmt: skip
UNREACHABLE = "http://127.0.0.1:9"
"""A tracking server nobody listens to (the discard port): refused at once."""
INJECTED = "injected failure"
MAINS = {"train": train, "segment": segment, "evaluate": evaluate, "export": export}
MAINS |= {"demo": demo, "report": report}


def _no_nan(name: str):
    raise AssertionError(f"not strict JSON: {name}")


def last_json(out: str) -> dict:
    """The last stdout line, parsed strictly (a bare NaN or Infinity fails)."""
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines, "nothing on stdout"
    return json.loads(lines[-1], parse_constant=_no_nan)


def ours(err: str) -> str:
    """stderr without the lines Ray forwards from its own processes (`(Actor pid=...)`)."""
    return "\n".join(line for line in err.splitlines() if not line.startswith("\x1b[36m("))


def run(job, argv: list, capsys) -> tuple[int, dict, str]:
    """(exit code, last stdout line, stderr) of ``job.main(argv)`` in this process."""
    capsys.readouterr()
    code = job.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    line = last_json(out)
    assert line["exit_code"] == code, line
    return code, line, err


def refused(job, argv: list, capsys, kind: str) -> dict:
    code, line, err = run(job, argv, capsys)
    assert (code, line.get("kind")) == (2, kind), (line, err[-2000:])
    assert "Traceback" not in ours(err)
    return line


def inject(monkeypatch, module, name: str) -> None:
    def fail(*args, **kwargs):
        raise RuntimeError(INJECTED)

    monkeypatch.setattr(module, name, fail)


def unexpected(job, argv: list, capsys) -> None:
    """Exit 3 naming the failure (the traceback at DEBUG: `test_the_process_exit_codes`, as
    logging is set up once per process)."""
    code, line, err = run(job, argv, capsys)
    assert (code, line["kind"]) == (3, "unexpected"), (line, err[-2000:])
    assert f"RuntimeError: {INJECTED}" in line["error"] and "Traceback" not in ours(err)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A labelled set, one with an image that decodes on the driver's check but not in training,
    one with a mask of the wrong size, a folder of images with a corrupt one, a checkpoint."""
    root = tmp_path_factory.mktemp("exit-classes")
    class_map = make_synthetic_dataset(root / "data", num_images=10, size=32, seed=0)
    shutil.copytree(root / "data", root / "truncated")
    image = sorted((root / "truncated" / "images").glob("*.png"))[0]
    image.write_bytes(image.read_bytes()[:200])  # header intact, pixel data cut
    shutil.copytree(root / "data", root / "mismatched")
    mask = sorted((root / "mismatched" / "masks").glob("*.png"))[0]
    Image.new("L", (9, 8)).save(mask)
    shutil.copytree(root / "data" / "images", root / "corrupt")
    (root / "corrupt" / "corrupt.png").write_bytes(b"not an image")
    return {
        "root": root,
        "data": root / "data",
        "truncated": root / "truncated",
        "mismatched": root / "mismatched",
        "images": root / "data" / "images",
        "corrupt": root / "corrupt",
        "ckpt": make_checkpoint(root / "unet.pt", class_map, base_width=4, depth=2),
    }


@pytest.mark.parametrize("job", MAINS)
def test_help_exits_0_without_json(job, capsys):
    assert MAINS[job].main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "usage:" in out and not out.strip().splitlines()[-1].startswith("{")


@pytest.mark.parametrize("job", MAINS)
def test_a_usage_error_is_2_naming_the_flag(job, capsys):
    line = refused(MAINS[job], ["--no-such-flag"], capsys, "usage")
    assert "unrecognized arguments: --no-such-flag" in line["error"]


def test_train_refusals_and_an_unexpected_failure(
    ray_local, mlflow_uri, files, tmp_path, capsys, monkeypatch
):
    argv = ["--data", files["data"], "--storage-path", tmp_path / "runs", *TRAIN]
    refused(train, [*argv, "--epochs", "x"], capsys, "usage")
    line = refused(train, [*argv, "--data", tmp_path / "missing"], capsys, "data")
    assert str(tmp_path / "missing") in line["error"]
    line = refused(train, [*argv, "--tracking-uri", UNREACHABLE], capsys, "tracking")
    assert UNREACHABLE in line["error"] and "unreachable" in line["error"]
    line = refused(train, [*argv, "--device", "gpu"], capsys, "device")
    assert "--device cpu" in line["error"]
    from jobs.training import job

    inject(monkeypatch, job, "class_weights")
    unexpected(train, argv, capsys)


def test_train_done_and_failed_criterion(ray_local, mlflow_uri, files, tmp_path, capsys):
    argv = ["--storage-path", tmp_path / "runs", *TRAIN]
    code, summary, err = run(train, ["--data", files["data"], *argv, "--run-name", "ok"], capsys)
    assert code == 0, err[-3000:]
    assert "error" not in summary and 0.0 <= summary["val_mean_iou"] <= 1.0
    assert (summary["failed"], summary["failed_fraction"], summary["failed_inputs"]) == (0, 0, [])
    assert summary["seconds"] > 0 and summary["images_per_second"] > 0

    code, line, err = run(train, ["--data", files["truncated"], *argv, "--run-name", "bad"], capsys)
    assert (code, line["kind"]) == (1, "criterion"), (line, err[-3000:])
    assert "--max-failed-fraction" in line["error"] and "Traceback" not in ours(err)


def test_segment_every_class(ray_local, mlflow_uri, files, tmp_path, capsys, monkeypatch):
    argv = ["--model", files["ckpt"], "--output", tmp_path / "out", "--num-workers", "1"]
    code, summary, err = run(segment, [*argv, "--input", files["images"]], capsys)
    assert code == 0 and "error" not in summary, err[-3000:]
    assert (summary["ok"], summary["failed"], summary["failed_fraction"]) == (10, 0, 0.0)
    assert summary["seconds"] > 0 and summary["failed_inputs"] == []
    code, done, err = run(report, ["--output", tmp_path / "out"], capsys)
    assert code == 0 and done["rows"] == 10 and done["seconds"] > 0, err[-3000:]

    bad = [*argv[:3], tmp_path / "bad", "--input", files["corrupt"]]
    code, line, err = run(segment, bad, capsys)
    assert (code, line["kind"], line["failed"]) == (1, "criterion", 1), (line, err[-3000:])
    assert "corrupt.png" in line["failed_inputs"][0]["input"]
    assert "--max-failed-fraction" in line["error"]
    code, line, _ = run(segment, [*bad, "--max-failed-fraction", "0.5"], capsys)
    assert (code, line["failed_fraction"]) == (0, pytest.approx(1 / 11)), line

    argv = [*argv, "--input", files["images"]]
    refused(segment, [*argv, "--tta", "rot90"], capsys, "usage")
    refused(segment, [*argv, "--input", tmp_path / "missing"], capsys, "input")
    line = refused(segment, [*argv, "--model", "models:/nothing@champion"], capsys, "model")
    assert "models:/nothing@champion" in line["error"]
    tracking = ["--model", "models:/unet@champion", "--tracking-uri", UNREACHABLE]
    refused(segment, [*argv, *tracking], capsys, "tracking")
    refused(segment, [*argv, "--output", tmp_path / "gpu", "--device", "gpu"], capsys, "device")
    from jobs.segmenting import job

    inject(monkeypatch, job, "fetch_model")
    unexpected(segment, argv, capsys)


def test_evaluate_every_class(ray_local, mlflow_uri, files, tmp_path, capsys, monkeypatch):
    argv = ["--model", files["ckpt"], "--num-workers", "1"]
    code, summary, err = run(evaluate, [*argv, "--data", files["data"]], capsys)
    assert code == 0 and "error" not in summary, err[-3000:]
    assert (summary["ok"], summary["failed"], summary["failed_inputs"]) == (10, 0, [])
    assert 0.0 <= summary["mean_iou"] <= 1.0 and summary["seconds"] > 0

    code, line, err = run(evaluate, [*argv, "--data", files["mismatched"]], capsys)
    assert (code, line["kind"], line["failed"]) == (1, "criterion", 1), (line, err[-3000:])
    assert line["failed_fraction"] == pytest.approx(0.1) and "9x8" in line["error"]

    argv = [*argv, "--data", files["data"]]
    refused(evaluate, [*argv, "--scores-file", tmp_path / "scores.json"], capsys, "usage")
    refused(evaluate, [*argv, "--data", tmp_path / "missing"], capsys, "data")
    refused(evaluate, [*argv, "--model", "models:/nothing@champion"], capsys, "model")
    refused(evaluate, [*argv, "--device", "gpu"], capsys, "device")
    from jobs.evaluating import job

    inject(monkeypatch, job, "fetch_model")
    unexpected(evaluate, argv, capsys)


def test_export_every_class(mlflow_uri, files, tmp_path, capsys, monkeypatch):
    argv = ["--model", files["ckpt"], "--format", "pt2", "--output", tmp_path / "unet.pt2"]
    code, summary, err = run(export, argv, capsys)
    assert code == 0 and summary["passed"] and "error" not in summary, err[-3000:]

    from jobs.exporting import check, formats

    real = check.check_export

    def off_by_one(*args, **kwargs):
        return [{**c, "max_abs_diff": c["max_abs_diff"] + 1.0} for c in real(*args, **kwargs)]

    with monkeypatch.context() as patched:
        patched.setattr(check, "check_export", off_by_one)
        code, line, _ = run(export, argv, capsys)
    assert (code, line["kind"], line["passed"]) == (1, "criterion", False), line
    assert "--tolerance" in line["error"]

    refused(export, [*argv, "--model", tmp_path / "missing.pt"], capsys, "model")
    with monkeypatch.context() as patched:
        patched.setattr(formats, "ONNX_PACKAGES", ("no_such_onnx_package",))
        refused(export, [*argv[:3], "onnx", "--output", tmp_path / "u.onnx"], capsys, "dependency")
    inject(monkeypatch, formats, "export_program")
    unexpected(export, argv, capsys)


def test_report_refusal_and_unexpected(files, tmp_path, capsys, monkeypatch):
    line = refused(report, ["--output", tmp_path / "missing"], capsys, "input")
    assert str(tmp_path / "missing") in line["error"]
    from jobs.reporting import job

    inject(monkeypatch, job, "find_manifest")
    unexpected(report, ["--output", tmp_path], capsys)


def test_demo_refusals_and_unexpected(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = refused(demo, ["--output", tmp_path / "d", "--epochs", "-1"], capsys, "usage")
    assert "train.py failed with exit code 2" in line["error"]  # the training job's refusal
    inject(monkeypatch, demo, "make_synthetic_dataset")
    unexpected(demo, ["--output", tmp_path / "d"], capsys)


def _script(args: list, home: Path, **kwargs) -> tuple[subprocess.CompletedProcess, dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "MLFLOW_"))}
    env |= {"HOME": str(home), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        **kwargs,
    )
    line = last_json(done.stdout)
    assert line["exit_code"] == done.returncode, (line, done.stderr[-3000:])
    return done, line


def test_the_process_exit_codes(files, tmp_path):
    """The scripts as a user runs them: the process's own exit code is the table's."""
    done, line = _script([REPO_ROOT / "jobs" / "segment.py", "--tile-size", "x"], tmp_path)
    assert (done.returncode, line["kind"]) == (2, "usage")
    export_argv = ["--model", files["ckpt"], "--format", "pt2", "--output", tmp_path / "u.pt2"]
    done, line = _script([REPO_ROOT / "jobs" / "export.py", *export_argv], tmp_path)
    assert (done.returncode, line["passed"]) == (0, True), done.stderr[-3000:]
    injected = (
        f"import sys; sys.path.insert(0, {str(REPO_ROOT)!r}); from jobs import export; "
        "from jobs.exporting import formats\n"
        f"def fail(*a, **k): raise RuntimeError({INJECTED!r})\n"
        "formats.export_program = fail; sys.exit(export.main(sys.argv[1:]))"
    )
    done, line = _script(["-c", injected, *export_argv], tmp_path)
    assert (done.returncode, line["kind"]) == (3, "unexpected") and "Traceback" not in done.stderr
    assert f"export failed: RuntimeError: {INJECTED}" in line["error"]
    done, line = _script(["-c", injected, *export_argv, "--log-level", "DEBUG"], tmp_path)
    assert done.returncode == 3 and "Traceback (most recent call last)" in done.stderr


@pytest.mark.slow
def test_the_demo_runs_to_0_with_its_summary_last(tmp_path):
    done, line = _script([REPO_ROOT / "jobs" / "demo.py", "--epochs", "1"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (line["ok"], line["failed"], line["model_uri"]) == (12, 0, "models:/unet/1"), line
    assert Path(line["picture"]).is_file() and line["seconds"] > 0
