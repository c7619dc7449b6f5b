"""jobs/export.py: a registered version and a checkpoint path exported as ONNX and pt2, run in
onnxruntime / torch.export.load on sizes and batches of their own (odd sides among them), compared with the PyTorch
model and unet_core.predict; the file logged to the version's run and tagged on the version; a
check that fails, and bad input."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from jobs.export import main
from jobs.exporting.formats import read_metadata
from tests.integration.inference.helpers import register_checkpoint, run_main
from tests.support import missing
from unet_core.checkpoint import load_checkpoint, save_checkpoint
from unet_core.classes import ClassMap
from unet_core.config import ModelConfig, PreprocessConfig
from unet_core.data import read_image
from unet_core.model import UNet
from unet_core.predict import predict
from unet_core.transforms import normalize_batch

pytestmark = pytest.mark.integration

PREPROCESS = PreprocessConfig(channels=3, mean=(0.45, 0.5, 0.55), std=(0.2, 0.25, 0.3))


def checkpoint_with_statistics(
    path: Path,
    class_map: ClassMap,
    *,
    channels: int = 3,
    depth: int = 2,
    norm: str = "batch",
    upsampling: str = "transpose",
    preprocess: PreprocessConfig = PREPROCESS,
) -> Path:
    """A small UNet whose norm layers are not the identity (affine and running statistics
    drawn at random, as after training), so the exported graph must carry them right."""
    torch.manual_seed(3)
    config = ModelConfig(
        in_channels=channels,
        num_classes=class_map.num_classes,
        base_width=4,
        depth=depth,
        norm=norm,
        upsampling=upsampling,
    )
    model = UNet.from_config(config)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    save_checkpoint(path, model, model_config=config, class_map=class_map, preprocess=preprocess)
    return path


def need_onnx() -> None:
    """The `export` extra: skipped on a developer's machine without it, a failure in CI."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        missing("the ONNX packages are not installed: pip install 'unet-ray[export]'")


def onnxruntime_session(path: Path):
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def torch_logits(checkpoint: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, H, W, C) uint8 -> (the normalised input, the PyTorch model's fp32 logits)."""
    loaded = load_checkpoint(checkpoint)
    x = normalize_batch(torch.from_numpy(images), loaded.preprocess).contiguous()
    with torch.no_grad():
        return x.numpy(), loaded.model(x).numpy()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_registered_version_to_onnx_and_pt2(tmp_path, mlflow_uri, synthetic_root, capsys):
    import mlflow
    from mlflow import MlflowClient

    need_onnx()
    class_map = ClassMap.from_file(synthetic_root / "classes.json")
    ckpt = checkpoint_with_statistics(tmp_path / "unet.pt", class_map)
    version = register_checkpoint(ckpt, tmp_path / "art")
    out = tmp_path / "out" / "model.onnx"

    code, summary = run_main(
        main, ["--model", "models:/unet@champion", "--format", "onnx", "--output", out], capsys
    )
    assert code == 0, summary
    assert summary["passed"] and summary["model_version"] == version
    assert 0 <= summary["max_abs_diff"] <= 1e-3 and summary["tolerance"] == 1e-3
    # auto: odd sides, a 1 x 1 and one below the multiple (the padding is in the graph)
    assert [c["shape"] for c in summary["checks"]] == [[2, 3, 13, 11], [1, 3, 1, 1], [1, 3, 3, 16]]
    assert summary["class_names"] == class_map.names and out.is_file()

    # The file in onnxruntime, on sizes and batches the job did not check: real images
    session = onnxruntime_session(out)
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, outp.name, inp.type) == ("input", "logits", "tensor(float)")
    assert isinstance(inp.shape[0], str) and inp.shape[1] == 3  # dynamic batch, fixed channels
    assert all(isinstance(d, str) for d in inp.shape[2:])  # dynamic height and width
    files = sorted((synthetic_root / "images").rglob("*.png"))
    full = np.stack([read_image(p, channels=3) for p in files[:3]])  # (3, 64, 64, 3)
    for images in (full, full[:1, :31, :45]):  # batch 3 at 64x64, batch 1 at 31x45
        x, expected = torch_logits(ckpt, images)
        got = session.run(["logits"], {"input": x})[0]
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() < 1e-3
        loaded = load_checkpoint(ckpt)
        masks = [
            predict(loaded.model, im, preprocess=loaded.preprocess, tile_size=None, amp=False).mask
            for im in images
        ]
        assert (got.argmax(axis=1) == np.stack(masks)).mean() > 0.999  # ties may round apart

    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["class_names"]) == class_map.names
    assert json.loads(meta["class_values"]) == class_map.values
    assert json.loads(meta["preprocess_mean"]) == pytest.approx(list(PREPROCESS.mean))
    assert json.loads(meta["preprocess_std"]) == pytest.approx(list(PREPROCESS.std))
    assert (meta["in_channels"], meta["spatial_multiple"], meta["any_size"], meta["graph"]) == (
        "3",
        "4",
        "true",
        "logits",
    )
    assert "size_rule" not in meta and "min_spatial_size" not in meta
    assert meta["model_uri"] == f"models:/unet/{version}"
    assert read_metadata(out, "onnx") == meta

    # Logged back: an artifact of the version's run, tags on the version
    client = MlflowClient()
    mv = client.get_model_version("unet", version)
    uri = f"runs:/{mv.run_id}/export/unet.onnx"
    assert summary["artifact_uri"] == uri and mv.tags["export.onnx"] == uri
    assert float(mv.tags["export.onnx.max_abs_diff"]) <= 1e-3
    assert mv.tags["export.onnx.sha256"] == sha256(out) == summary["sha256"]
    logged = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "dl")))
    assert sha256(logged) == sha256(out)

    # pt2 of the same version (by number): torch.export.load, dynamic batch and sides
    pt2 = tmp_path / "out" / "unet.pt2"
    code, summary = run_main(
        main, ["--model", f"models:/unet/{version}", "--format", "pt2", "--output", pt2], capsys
    )
    assert code == 0 and summary["passed"], summary
    assert summary["max_abs_diff"] <= 1e-5  # the same ATen operations as eager
    module = torch.export.load(pt2).module()
    for images in (full, full[:1, :17, :39]):
        x, expected = torch_logits(ckpt, images)
        with torch.no_grad():
            got = module(torch.from_numpy(x)).numpy()
        assert np.abs(got - expected).max() <= 1e-5
    assert json.loads(read_metadata(pt2, "pt2")["class_names"]) == class_map.names
    tags = client.get_model_version("unet", version).tags
    assert tags["export.pt2"] == f"runs:/{mv.run_id}/export/unet.pt2"
    assert tags["export.onnx"] == uri  # the first export's tags stay
    artifacts = {a.path for a in client.list_artifacts(mv.run_id, "export")}
    assert artifacts == {"export/unet.onnx", "export/unet.pt2"}


def test_checkpoint_path_exports_and_logs_nothing(tmp_path, monkeypatch, synthetic_root, capsys):
    """Grayscale, GroupNorm, bilinear upsampling, depth 3 (sides multiples of 8): other graphs
    than the registered test's; no MLflow store is opened for a checkpoint path."""
    need_onnx()
    never = tmp_path / "never.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{never}")
    class_map = ClassMap.from_file(synthetic_root / "classes.json")
    ckpt = checkpoint_with_statistics(
        tmp_path / "gray.pt",
        class_map,
        channels=1,
        depth=3,
        norm="group",
        upsampling="bilinear",
        preprocess=PreprocessConfig(channels=1, mean=(0.4,), std=(0.3,)),
    )
    out = tmp_path / "gray.onnx"
    argv = ["--model", ckpt, "--format", "onnx", "--output", out, "--opset", "18"]
    code, summary = run_main(main, [*argv, "--check-sizes", "33x47,1x16"], capsys)
    assert code == 0 and summary["passed"], summary
    assert [c["shape"] for c in summary["checks"]] == [[2, 1, 33, 47], [1, 1, 1, 16]]
    assert summary["opset"] == 18 and summary["input"]["spatial_multiple"] == 8
    assert summary["artifact_uri"] is None and summary["model_version"] is None

    import onnx

    graph = onnx.load(str(out))
    assert {o.domain: o.version for o in graph.opset_import}[""] == 18
    dims = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in (*graph.graph.input, *graph.graph.output)
    }  # the dynamic sizes named as the user knows them, not s0, s53
    assert dims == {
        "input": ["batch", 1, "height", "width"],
        "logits": ["batch", 3, "height", "width"],
    }
    session = onnxruntime_session(out)
    images = np.random.default_rng(5).integers(0, 256, (3, 5, 11, 1), dtype=np.uint8)
    x, expected = torch_logits(ckpt, images)  # below the multiple of 8: replicate in the graph
    assert np.abs(session.run(None, {"input": x})[0] - expected).max() < 1e-3

    pt2 = tmp_path / "gray.pt2"
    code, summary = run_main(main, ["--model", ckpt, "--format", "pt2", "--output", pt2], capsys)
    assert code == 0 and summary["passed"] and pt2.is_file(), summary
    assert not never.exists()


def test_a_check_over_the_tolerance_fails_and_logs_nothing(
    tmp_path, mlflow_uri, synthetic_root, capsys
):
    """onnxruntime's float rounding is not PyTorch's: a tolerance of 0 cannot be met."""
    from mlflow import MlflowClient

    need_onnx()
    class_map = ClassMap.from_file(synthetic_root / "classes.json")
    version = register_checkpoint(
        checkpoint_with_statistics(tmp_path / "unet.pt", class_map), tmp_path / "art"
    )
    out = tmp_path / "unet.onnx"
    argv = ["--model", f"models:/unet/{version}", "--format", "onnx", "--output", out]
    code, summary = run_main(main, [*argv, "--tolerance", "0"], capsys)
    assert code == 1 and not summary["passed"], summary
    assert summary["max_abs_diff"] > 0 and "--tolerance 0" in summary["error"]
    assert out.is_file() and summary["artifact_uri"] is None  # kept for a look, not logged
    client = MlflowClient()
    mv = client.get_model_version("unet", version)
    assert not [k for k in mv.tags if k.startswith("export")]
    assert not client.list_artifacts(mv.run_id, "export")


def test_bad_input_exits_2_naming_the_fix(tmp_path, mlflow_uri, synthetic_root, capsys):
    class_map = ClassMap.from_file(synthetic_root / "classes.json")
    ckpt = str(checkpoint_with_statistics(tmp_path / "unet.pt", class_map))
    out = tmp_path / "unet.onnx"

    assert main(["--model", ckpt, "--format", "tflite", "--output", str(out)]) == 2
    assert "--format must be one of onnx, pt2, got 'tflite'" in capsys.readouterr().err
    assert main(["--format", "onnx", "--output", str(out)]) == 2
    assert "--model is required" in capsys.readouterr().err
    assert main(["--model", ckpt, "--format", "pt2", "--output", "s3://b/unet.pt2"]) == 2
    assert "give a local file path" in capsys.readouterr().err

    code, summary = run_main(
        main, ["--model", tmp_path / "nope.pt", "--format", "pt2", "--output", out], capsys
    )
    assert code == 2 and "nope.pt: no such checkpoint" in summary["error"]
    code, summary = run_main(
        main, ["--model", "models:/unet@nope", "--format", "pt2", "--output", out], capsys
    )
    assert code == 2 and "'unet'" in summary["error"] and "alias 'nope'" in summary["error"]
    code, summary = run_main(
        main,
        ["--model", ckpt, "--format", "pt2", "--output", out, "--check-sizes", "0x32"],
        capsys,
    )
    assert code == 2 and "sides >= 1" in summary["error"]
    assert not out.exists()


def test_onnx_without_the_export_extra_says_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now fails
    out = tmp_path / "unet.onnx"
    code, summary = run_main(
        main, ["--model", tmp_path / "any.pt", "--format", "onnx", "--output", out], capsys
    )
    assert code == 2 and "pip install 'unet-ray[export]'" in summary["error"]
    assert "onnxruntime" in summary["error"] and not out.exists()


def test_help_lists_every_field(capsys):
    from jobs.exporting.config import ExportConfig

    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "uint8-mask" in text and "pip install -e '.[export]'" in text
    for name in ExportConfig.__dataclass_fields__:
        assert "--" + name.replace("_", "-") in text, name
