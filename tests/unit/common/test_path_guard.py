"""The path guard on a cluster: a class map or recipe file inside the job's working directory
travels with the uploaded code and only the driver reads it, so it is accepted; paths that
workers read (data, storage, inputs, outputs) stay refused wherever they are."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.common.cluster_info import ClusterView
from jobs.common.path_guard import (
    DRIVER_READ_FLAGS,
    LocalPathError,
    inside_working_dir,
    local_path_problems,
    refuse_local_paths,
)
from jobs.inference import session
from jobs.inference.config import EvaluateConfig, parse_config
from jobs.training import preflight
from jobs.training.config import parse_args

MULTI = ClusterView(local=False, nodes=3, resources={"CPU": 24})
AUTOSCALING = ClusterView(local=False, nodes=1, resources={}, autoscaler="v1")
REMOTE = ["--storage-path", "s3://b/runs", "--tracking-uri", "http://mlflow:5000"]


@pytest.fixture
def working_dir(tmp_path: Path, monkeypatch) -> Path:
    """An unpacked working directory, as `ray job submit --working-dir` gives the driver."""
    root = tmp_path / "working_dir"
    (root / "configs").mkdir(parents=True)
    (root / "configs" / "camvid.classes.json").write_text("{}")
    monkeypatch.chdir(root)
    return root


def test_inside_working_dir(working_dir: Path):
    assert inside_working_dir("configs/camvid.classes.json")
    assert inside_working_dir(str(working_dir / "configs" / "camvid.classes.json"))
    assert inside_working_dir(f"file://{working_dir}/configs/x.yaml")
    assert not inside_working_dir("../outside.json")
    assert not inside_working_dir("configs/../../outside.json")
    assert not inside_working_dir("/etc/classes.json")
    assert not inside_working_dir(str(working_dir) + "-other/x.json")  # a sibling, not inside


@pytest.mark.parametrize("view", [MULTI, AUTOSCALING], ids=["multi-node", "autoscaling"])
@pytest.mark.parametrize("flag", sorted(DRIVER_READ_FLAGS))
def test_driver_read_file_inside_the_working_dir_is_accepted(working_dir, view, flag):
    for value in ("configs/camvid.classes.json", str(working_dir / "configs" / "c.json")):
        assert local_path_problems(view, {flag: value}, shared_fs=False) == []
    refuse_local_paths(view, {flag: "configs/camvid.classes.json"}, shared_fs=False)


@pytest.mark.parametrize("flag", sorted(DRIVER_READ_FLAGS))
def test_driver_read_file_outside_the_working_dir_is_refused(working_dir, flag):
    with pytest.raises(LocalPathError) as info:
        refuse_local_paths(MULTI, {flag: "/home/me/classes.json"}, shared_fs=False)
    message = str(info.value)
    assert f"{flag} /home/me/classes.json" in message
    assert str(working_dir) in message and "--working-dir" in message
    assert "relative path" in message and "s3://" in message


@pytest.mark.parametrize("flag", ["--data", "--val-data", "--input", "--output", "--storage-path"])
def test_paths_workers_read_stay_refused_inside_the_working_dir(working_dir, flag):
    problems = local_path_problems(MULTI, {flag: "configs"}, shared_fs=False)
    assert len(problems) == 1 and problems[0].startswith(f"{flag} configs is a local path")


def test_train_accepts_the_readme_recipe_on_a_cluster(working_dir):
    cfg = parse_args(
        ["--data", "s3://b/camvid", "--class-map", "configs/camvid.classes.json", *REMOTE]
    )
    assert preflight.path_problems(MULTI, cfg) == []
    local_data = parse_args(["--data", "data/camvid", "--class-map", "configs/c.json", *REMOTE])
    problems = preflight.path_problems(MULTI, local_data)
    assert [p.split(" ", 1)[0] for p in problems] == ["--data"]


def test_evaluate_accepts_a_class_map_in_the_working_dir(working_dir):
    def problems(*argv: str) -> list[str]:
        cfg = parse_config(
            EvaluateConfig,
            ["--model", "models:/unet@champion", "--tracking-uri", "http://m:5000", *argv],
            prog="evaluate",
            description="",
        )
        return local_path_problems(MULTI, session.guarded_paths(cfg), shared_fs=False)

    assert problems("--data", "s3://b/d", "--class-map", "configs/camvid.classes.json") == []
    refused = problems("--data", "s3://b/d", "--class-map", "/tmp/elsewhere/classes.json")
    assert len(refused) == 1 and refused[0].startswith("--class-map /tmp/elsewhere")
