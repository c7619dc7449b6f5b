"""`jobs/plan.py main()` on a small generated set, on a local Ray: from a folder and from S3
(a local moto server); the same data and seed give the same fingerprint."""

from __future__ import annotations

import json

import pytest

from jobs.plan import main
from jobs.planning.fingerprint import Fingerprint
from tests.conftest import upload_tree

pytestmark = pytest.mark.integration


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_plan_writes_the_fingerprint_locally_and_from_s3(
    ray_local, synthetic_root, s3_endpoint, s3_bucket, tmp_path, capsys
):
    output = tmp_path / "fingerprint.json"
    assert main(["--data", str(synthetic_root), "--output", str(output), "--sample", "10"]) == 0
    summary = last_json(capsys)
    fp = Fingerprint.from_json(output.read_text())
    assert summary["output"] == str(output) and summary["fingerprint"] == fp.to_dict()
    assert fp.pairs == 16 and fp.sampled == 10 and fp.failures == 0
    assert fp.sizes.median_height == 64 and fp.channels == {"3": 16}
    assert fp.intensity.channels == 3 and fp.intensity.dtype == "uint8"
    assert [c.name for c in fp.classes] == ["background", "ellipse", "rectangle"]
    assert sum(c.pixel_fraction for c in fp.classes) == pytest.approx(1.0, abs=1e-4)

    data = upload_tree(synthetic_root, s3_bucket, "sets/synthetic", s3_endpoint)
    args = ["--data", data, "--sample", "10", "--s3-endpoint-url", s3_endpoint]
    assert main([*args, "--output", f"{data}/fingerprint.json"]) == 0
    remote = last_json(capsys)["fingerprint"]
    assert remote == {**fp.to_dict(), "root": data}  # same data and seed: same fingerprint

    assert main([*args, "--seed", "1"]) == 0  # another sample of 10 of the 16
    assert last_json(capsys)["fingerprint"]["intensity"] != remote["intensity"]


def test_plan_refuses_a_root_without_pairs(ray_local, tmp_path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "classes.json").write_text(
        '{"classes": [{"name": "a", "value": 0}, {"name": "b", "value": 1}]}'
    )
    assert main(["--data", str(tmp_path)]) == 2
    assert "images/ is missing or holds no image files" in last_json(capsys)["error"]


def test_plan_with_a_budget_writes_a_recipe_the_jobs_accept(
    ray_local, synthetic_root, tmp_path, capsys
):
    from jobs import evaluate, segment
    from jobs.training.config import parse_args

    recipe = tmp_path / "recipe.yaml"
    argv = ["--data", str(synthetic_root), "--sample", "16", "--budget-minutes", "5",
            "--num-workers", "2", "--device", "cpu", "--output", str(recipe)]  # fmt: skip
    assert main([*argv, "--step-seconds", "0.05"]) == 0
    summary = last_json(capsys)
    assert summary["output"] == str(recipe) and summary["recipe"] == recipe.read_text()
    beside = tmp_path / "recipe.fingerprint.json"  # the fingerprint beside the recipe
    assert summary["fingerprint_output"] == str(beside)
    assert Fingerprint.from_json(beside.read_text()).pairs == 16
    planned = summary["plan"]
    assert planned["crop_size"] == 64 and planned["base_width"] in (16, 24, 32)

    cfg = parse_args(["--config", str(recipe), "--data", str(synthetic_root)])
    assert cfg.train.crop_size == 64 and cfg.train.epochs == planned["epochs"]
    assert cfg.train.samples_per_epoch == planned["samples_per_epoch"]
    assert cfg.model.depth == planned["depth"]
    required = {
        segment: ["--model", "m.pt", "--input", "in", "--output", "out"],
        evaluate: ["--model", "m.pt", "--data", "set"],
    }
    for job, args in required.items():  # their sections: TTA and tiles
        job_cfg = job.parse(["--config", str(recipe), *args])
        assert job_cfg.tta == "dihedral" and job_cfg.tile_size == 64

    # the same data, budget, resources and step time: the same recipe; measured: timed on a
    # training worker's resources, a few seconds
    assert main([*argv, "--step-seconds", "0.05", "--output", str(tmp_path / "again.yaml")]) == 0
    again = (tmp_path / "again.yaml").read_text()
    assert again.replace("again.yaml", "recipe.yaml") == recipe.read_text()
    assert main(argv) == 0
    measured = last_json(capsys)
    assert "Step seconds by base width: w16:" in measured["recipe"]


@pytest.mark.slow
def test_train_plan_auto_plans_trains_and_logs_the_plan(
    ray_local, mlflow_uri, synthetic_root, tmp_path, capsys
):
    import mlflow
    import yaml
    from mlflow.tracking import MlflowClient

    from jobs.train import main as train_main

    argv = ["--data", str(synthetic_root), "--plan", "auto", "--budget-minutes", "1",
            "--epochs", "1", "--num-workers", "2", "--storage-path", str(tmp_path / "runs"),
            "--run-name", "planned"]  # fmt: skip
    assert train_main(argv) == 0
    summary = last_json(capsys)
    assert summary["epochs"] == 1  # a flag overrides the plan
    planned = summary["plan"]
    assert "epochs" not in planned and planned["crop_size"] == 64
    params = MlflowClient().get_run(summary["run_id"]).data.params
    assert params["plan"] == "auto" and params["budget_minutes"] == "1.0"
    assert params["crop_size"] == "64" and params["epochs"] == "1"
    assert params["samples_per_epoch"] == str(planned["samples_per_epoch"])
    run = f"runs:/{summary['run_id']}"
    fingerprint = Fingerprint.from_json(mlflow.artifacts.load_text(f"{run}/fingerprint.json"))
    assert fingerprint.pairs == 16
    recipe = mlflow.artifacts.load_text(f"{run}/plan.yaml")
    assert yaml.safe_load(recipe)["model"]["base_width"] == int(params["base_width"])
    assert "set by flags or --config instead: epochs" in recipe
