"""The jobs' one registry reader (`jobs.common.model_source.fetch_model`): MLflow 3 model URIs
(logged models ``models:/m-<id>``, registered versions and aliases), the checkpoint artifact
found by name in a model folder, and the errors of URIs and folders that name no model. A real
sqlite MLflow store in a temporary folder; no model is trained."""

from __future__ import annotations

import pytest

from jobs.common.model_source import (
    CHECKPOINT_ARTIFACT,
    ModelSourceError,
    checkpoint_digest,
    fetch_checkpoint_bytes,
    fetch_model,
    resolve_model,
)
from tests.integration.inference.helpers import make_checkpoint, register_checkpoint
from unet_core.classes import ClassMap

CLASSES = ClassMap.from_names(["background", "cell"], values=[0, 255])


def _logged_model(tmp_path, *, seed: int = 0) -> tuple[str, bytes]:
    """A logged model (MLflow 3 entity) holding artifacts/unet.pt, in a run; (model id, bytes)."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    experiment = client.create_experiment(
        f"uris-{seed}", artifact_location=(tmp_path / f"art{seed}").as_uri()
    )
    files = tmp_path / f"model{seed}"
    ckpt = make_checkpoint(files / "artifacts/unet.pt", CLASSES, seed=seed)
    with mlflow.start_run(experiment_id=experiment) as run:
        logged = client.create_logged_model(experiment, name="unet", source_run_id=run.info.run_id)
        client.log_model_artifacts(logged.model_id, str(files))
        client.finalize_logged_model(logged.model_id, "READY")
    return logged.model_id, ckpt.read_bytes()


def test_logged_model_uri_is_its_own_fixed_form(tmp_path, mlflow_uri):
    import mlflow

    model_id, data = _logged_model(tmp_path)
    resolved = resolve_model(f"models:/{model_id}")
    assert resolved.uri_resolved == f"models:/{model_id}" and resolved.model_id == model_id
    assert (resolved.name, resolved.version, resolved.alias) == (None, None, None)  # unregistered
    assert resolved.run_id == mlflow.MlflowClient().get_logged_model(model_id).source_run_id
    assert resolved.to_dict()["model_id"] == model_id
    assert fetch_checkpoint_bytes(resolved) == data
    assert resolve_model(f"models:/{model_id}/").uri_resolved == f"models:/{model_id}"

    # Registered: the version it is linked to is recorded, and the version and the alias
    # resolve to the same logged model.
    version = mlflow.register_model(f"models:/{model_id}", "seg").version
    mlflow.MlflowClient().set_registered_model_alias("seg", "champion", version)
    linked = resolve_model(f"models:/{model_id}")
    assert (linked.uri_resolved, linked.name, linked.version) == (
        f"models:/{model_id}",
        "seg",
        str(version),
    )
    by_alias = resolve_model("models:/seg@champion")
    assert (by_alias.uri_resolved, by_alias.model_id) == (f"models:/seg/{version}", model_id)
    assert fetch_checkpoint_bytes(by_alias) == data


def test_an_explicit_tracking_uri_wins_over_the_process_store(tmp_path, mlflow_uri, monkeypatch):
    """--tracking-uri names the store even when $MLFLOW_TRACKING_URI and the process-wide URI
    point elsewhere (MLflow's models:/ download asks the process-wide one)."""
    import mlflow

    model_id, data = _logged_model(tmp_path)
    mlflow.register_model(f"models:/{model_id}", "seg")
    mlflow.MlflowClient().set_registered_model_alias("seg", "champion", "1")
    other = f"sqlite:///{tmp_path / 'other.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", other)
    mlflow.set_tracking_uri(other)
    mlflow.set_registry_uri(other)
    try:
        for uri in (f"models:/{model_id}", "models:/seg@champion", "models:/seg/1"):
            resolved = resolve_model(uri, tracking_uri=mlflow_uri)
            assert resolved.model_id == model_id, uri
            assert fetch_checkpoint_bytes(resolved, tracking_uri=mlflow_uri) == data, uri
        with pytest.raises(ModelSourceError, match="no logged model"):
            resolve_model(f"models:/{model_id}")  # the other store has none
    finally:
        mlflow.set_tracking_uri(mlflow_uri)
        mlflow.set_registry_uri(mlflow_uri)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("models:/m-0123456789abcdef", "no logged model with id 'm-0123456789abcdef'"),
        ("models:/unet", "for a registered model pass models:/unet@ALIAS or models:/unet/VERSION"),
        ("models:/unet/Production", "use an alias or a version"),
        ("models:/unet/latest", "use an alias or a version"),
        ("models:/unet/1/extra", "not a model URI; expected one of models:/NAME@ALIAS"),
        ("models:/unet@", "not a model URI"),
        ("models:/", "not a model URI"),
        ("models:/unet@champion", "no version of registered model 'unet' holds alias"),
        ("models:/unet/7", "registered model 'unet' has no version 7"),
        ("runs:/", "Not a proper runs:/ URI"),
    ],
)
def test_bad_model_uris_say_what_to_pass(uri, message, mlflow_uri):
    with pytest.raises(ModelSourceError, match=message.replace("(", r"\(")) as info:
        resolve_model(uri)
    assert str(info.value).startswith(uri), info.value


def test_the_training_writer_and_the_reader_agree_on_the_artifact(tmp_path, mlflow_uri):
    """What jobs/training/registry.py logs, fetch_model reads back, whatever the file's name:
    the artifact is found by its name in the MLmodel file."""
    from jobs.training import pyfunc_model

    assert pyfunc_model.ARTIFACT_KEY == CHECKPOINT_ARTIFACT  # the logged code loads the same
    ckpt = make_checkpoint(tmp_path / "best-of-run.pt", CLASSES, seed=3)
    version = register_checkpoint(ckpt, tmp_path / "art")
    model = fetch_model("models:/unet@champion", tracking_uri=mlflow_uri)
    assert (model.resolved.version, model.resolved.alias) == (version, "champion")
    assert model.checkpoint == ckpt.read_bytes()
    assert model.sha256 == checkpoint_digest(ckpt.read_bytes())
    assert model.loaded.class_map.names == CLASSES.names


def _mlflow_model_folder(root, artifacts: dict[str, str]):
    """A model folder as MLflow downloads it: an MLmodel file naming its pyfunc artifacts."""
    from mlflow.models import Model

    model = Model()
    model.add_flavor(
        "python_function",
        loader_module="mlflow.pyfunc.model",
        artifacts={name: {"path": path, "uri": path} for name, path in artifacts.items()},
    )
    root.mkdir(parents=True)
    model.save(str(root / "MLmodel"))
    return root


def test_a_model_folder_gives_exactly_its_checkpoint_artifact(tmp_path):
    folder = _mlflow_model_folder(tmp_path / "m", {CHECKPOINT_ARTIFACT: "artifacts/w.pt"})
    ckpt = make_checkpoint(folder / "artifacts/w.pt", CLASSES, seed=1)
    make_checkpoint(folder / "artifacts/unet.pt", CLASSES, seed=2)  # not the logged artifact
    assert fetch_model(str(folder)).checkpoint == ckpt.read_bytes()

    other = _mlflow_model_folder(tmp_path / "other", {"weights": "artifacts/unet.pt"})
    make_checkpoint(other / "artifacts/unet.pt", CLASSES)
    with pytest.raises(ModelSourceError, match=r"no 'unet' artifact file \(its artifacts: \['w"):
        fetch_model(str(other))

    deep = tmp_path / "deep"
    make_checkpoint(deep / "some/run/unet.pt", CLASSES)  # no rglob: a folder is a model or not
    make_checkpoint(deep / "x.pt", CLASSES)
    with pytest.raises(ModelSourceError, match="not a logged unet model") as info:
        fetch_model(str(deep))
    assert str(info.value).startswith(str(deep))

    # Without an MLmodel file: the pyfunc layout, and a training checkpoint folder.
    pyfunc = make_checkpoint(tmp_path / "pyfunc/artifacts/unet.pt", CLASSES)
    assert fetch_model(str(tmp_path / "pyfunc")).checkpoint == pyfunc.read_bytes()
    run = make_checkpoint(tmp_path / "checkpoint_000001/unet.pt", CLASSES)
    assert fetch_model(str(run.parent)).checkpoint == run.read_bytes()


def test_a_checkpoint_that_does_not_load_names_the_uri(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelSourceError, match="not a loadable unet-ray checkpoint") as info:
        fetch_model(str(junk))
    assert str(info.value).startswith(str(junk)) and "jobs/train.py" in str(info.value)


def test_a_registered_version_without_a_checkpoint_names_its_uri(tmp_path, mlflow_uri):
    from mlflow import MlflowClient

    client = MlflowClient()
    client.create_registered_model("seg")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/notes.txt").write_text("no weights here")
    client.create_model_version("seg", source=str(tmp_path / "empty"))
    with pytest.raises(ModelSourceError, match="not a logged unet model") as info:
        fetch_model("models:/seg/1")
    assert str(info.value).startswith("models:/seg/1: "), info.value
