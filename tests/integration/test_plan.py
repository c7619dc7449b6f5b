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
