"""An ensemble registered as one model version (jobs/training/ensemble_publish.py) is used with
no flag: segment and evaluate by ``models:/NAME@ALIAS`` give the masks of
`unet_core.predict` with the ensemble; the pyfunc gives them in a Python without the project;
its ONNX export matches the eager ensemble in onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from jobs import evaluate, segment
from jobs.export import main as export_main
from tests.integration.inference.helpers import (
    REPO_ROOT,
    expected_masks,
    make_checkpoint,
    run_main,
)
from tests.integration.inference.test_export import need_onnx, onnxruntime_session
from tests.integration.inference.test_pyfunc_anywhere import pyfunc_elsewhere
from unet_core.checkpoint import load_checkpoint
from unet_core.classes import ClassMap
from unet_core.data import read_image, read_mask
from unet_core.ensemble import Ensemble, save_ensemble
from unet_core.metrics import ConfusionMatrix
from unet_core.predict import predict, prepare_for_inference
from unet_core.transforms import normalize_batch

pytestmark = pytest.mark.integration

EXPERIMENT = "ensemble-tests"


@pytest.fixture
def members(tmp_path, synthetic_root) -> tuple[Path, list[Path]]:
    """Two tiny random members of one recipe and their ensemble file."""
    class_map = ClassMap.from_file(synthetic_root / "classes.json")
    paths = [
        make_checkpoint(tmp_path / f"fold_{i}.pt", class_map, base_width=4, depth=2, seed=i)
        for i in range(2)
    ]
    save_ensemble(tmp_path / "ensemble.pt", paths, extra={"folds": 2})
    return tmp_path / "ensemble.pt", paths


def _register(members, tmp_path, *, name: str) -> str:
    """The ensemble logged and registered by the product's helper; @champion moved to it."""
    import mlflow

    from jobs.training.ensemble_publish import log_ensemble_model

    ensemble, paths = members
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        mlflow.create_experiment(EXPERIMENT, artifact_location=(tmp_path / "art").as_uri())
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run() as run:
        reg = log_ensemble_model(
            run_id=run.info.run_id,
            ensemble_path=ensemble,
            member_paths=paths,
            name=name,
            alias="champion",
            val_miou=0.5,
            min_miou=0.1,
        )
    assert reg.alias_set, reg.reason
    client = mlflow.MlflowClient()
    mv = client.get_model_version(name, reg.version)
    assert mv.tags["ensemble_members"] == "2" and mv.tags["val_miou"] == "0.500000"
    logged = [a.path for a in client.list_artifacts(run.info.run_id, "members")]
    assert logged == ["members/fold_0.pt", "members/fold_1.pt"]
    for i, path in enumerate(paths):
        local = mlflow.artifacts.download_artifacts(
            f"{mv.tags['members_artifacts']}/fold_{i}.pt", dst_path=str(tmp_path / f"dl{i}")
        )
        assert Path(local).read_bytes() == path.read_bytes()
    return reg.version


def test_segment_and_evaluate_use_a_registered_ensemble(
    tmp_path, ray_local, mlflow_uri, synthetic_root, members, capsys
):
    version = _register(members, tmp_path, name="ens")
    ensemble, paths = members
    images = sorted((synthetic_root / "images").glob("*.png"))
    expected = expected_masks(ensemble, images)
    assert load_checkpoint(ensemble).members == 2
    # The ensemble's masks are its own: neither member alone gives them.
    for path in paths:
        alone = expected_masks(path, images)
        assert any(not np.array_equal(alone[p.name], expected[p.name]) for p in images)

    out = tmp_path / "out"
    argv = [
        "--input",
        synthetic_root / "images",
        "--output",
        out,
        "--model",
        "models:/ens@champion",
    ]
    code, summary = run_main(segment.main, [*argv, "--no-log-to-mlflow"], capsys)
    assert code == 0 and summary["ok"] == len(images), summary
    assert summary["model_uri"] == f"models:/ens/{version}"
    for p in images:
        got = np.asarray(Image.open(out / "masks" / p.name))
        np.testing.assert_array_equal(got, expected[p.name], err_msg=p.name)

    report = tmp_path / "scores.parquet"
    argv = ["--model", "models:/ens@champion", "--data", synthetic_root, "--scores-file", report]
    code, summary = run_main(evaluate.main, argv, capsys)
    assert code == 0, summary
    class_map = ClassMap.from_file(synthetic_root / "classes.json")
    rows = {r["key"]: r for r in pq.read_table(report).to_pylist()}
    total = ConfusionMatrix(class_map.num_classes)
    for p in images:
        truth = read_mask(synthetic_root / "masks" / p.name, class_map)
        matrix = ConfusionMatrix(class_map.num_classes)
        matrix.update(expected[p.name], truth)
        total.update(expected[p.name], truth)
        assert np.asarray(rows[p.stem]["confusion"]).reshape(3, 3).tolist() == (
            matrix.matrix.tolist()
        ), p.name
    assert summary["confusion_matrix"] == total.matrix.tolist()


def test_the_ensemble_pyfunc_loads_without_the_project(
    tmp_path, mlflow_uri, synthetic_root, members
):
    import mlflow

    _register(members, tmp_path, name="unet")  # ELSEWHERE loads models:/unet@champion
    ensemble, _ = members
    loaded = load_checkpoint(ensemble)
    image = read_image(sorted((synthetic_root / "images").glob("*.png"))[0], channels=3)
    model = prepare_for_inference(loaded.model, "cpu")
    expected = predict(model, image, preprocess=loaded.preprocess).mask
    assert len(np.unique(expected)) > 1  # a mask that says something
    dl = tmp_path / "dl"
    folder = Path(mlflow.artifacts.download_artifacts("models:/unet@champion", dst_path=dl))
    assert (folder / "code/unet_core/ensemble.py").is_file()
    assert not (folder / "artifacts" / "members").exists()  # members are run artifacts

    report, array_mask, frame_mask, state = pyfunc_elsewhere(tmp_path, mlflow_uri, image)
    assert report["unet"] == "Ensemble"
    assert not Path(report["unet_core"]).is_relative_to(REPO_ROOT), report
    np.testing.assert_array_equal(array_mask, expected)
    np.testing.assert_array_equal(frame_mask, expected)
    assert state.keys() == loaded.model.state_dict().keys()


def test_onnx_export_of_an_ensemble_matches_eager(tmp_path, synthetic_root, members, capsys):
    need_onnx()
    ensemble, _ = members
    out = tmp_path / "ensemble.onnx"
    code, summary = run_main(
        export_main, ["--model", ensemble, "--format", "onnx", "--output", out], capsys
    )
    assert code == 0 and summary["passed"], summary
    loaded = load_checkpoint(ensemble)
    assert isinstance(loaded.model, Ensemble)
    session = onnxruntime_session(out)
    images = np.stack(
        [read_image(p, channels=3) for p in sorted((synthetic_root / "images").glob("*.png"))[:2]]
    )
    for batch in (images, images[:1, :24, :40]):
        x = normalize_batch(torch.from_numpy(batch), loaded.preprocess).contiguous()
        with torch.no_grad():
            eager = loaded.model(x).numpy()
        got = session.run(["logits"], {"input": x.numpy()})[0]
        assert got.shape == eager.shape
        assert np.abs(got - eager).max() < 1e-4
