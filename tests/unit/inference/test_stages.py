"""Units of the batch jobs without Ray: config, inputs, decode, predictor, writer, manifest,
model source."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from jobs.common.mlflow_store import resolve_tracking_uri
from jobs.common.model_source import (
    ModelSourceError,
    fetch_checkpoint_bytes,
    find_checkpoint,
    resolve_model,
)
from jobs.common.resources import forward_batch
from jobs.inference.config import EvaluateConfig, SegmentConfig, build_parser, parse_config
from jobs.inference.decode import decode_images
from jobs.inference.predictor import Predictor, PredictorOptions
from jobs.segmenting import layout, manifest
from jobs.segmenting.layout import mask_key
from jobs.segmenting.writer import MaskWriter, WriterOptions, encode_mask
from tests.integration.inference.helpers import make_checkpoint
from unet_core.checkpoint import load_checkpoint
from unet_core.classes import ClassMap
from unet_core.compiled import CompiledModel
from unet_core.predict import predict, prepare_for_inference

CLASSES = ClassMap.from_names(["background", "cell", "edge"], values=[0, 128, 255])


# --- config ----------------------------------------------------------------------------------
def test_help_documents_every_field(capsys):
    for cls in (SegmentConfig, EvaluateConfig):
        text = build_parser(cls, prog="x", description="d").format_help()
        for name in cls.__dataclass_fields__:
            assert "--" + name.replace("_", "-") in text, name
    text = build_parser(SegmentConfig, prog="x", description="d").format_help()
    assert "--max-failed-fraction" in text and "palette PNG" in text


def test_config_parsing_and_validation(capsys):
    cfg = parse_config(
        SegmentConfig,
        [
            "--input",
            "in",
            "--output",
            "s3://b/o",
            "--tta",
            "flip",
            "--device",
            "gpu",
            "--gpus-per-worker",
            "0.5",
            "--num-workers",
            "0-3",
            "--mask-format",
            "color",
        ],
        prog="x",
        description="d",
    )
    assert (cfg.tta, cfg.use_gpu, cfg.gpus_per_worker, cfg.worker_range, cfg.mask_format) == (
        "flip",
        True,
        0.5,
        (0, 3),
        "color",
    )
    assert cfg.model == "models:/unet@champion" and cfg.amp_flag is None
    with pytest.raises(SystemExit) as exc:
        parse_config(
            SegmentConfig,
            ["--input", "in", "--output", "o", "--mask-format", "rgb"],
            prog="x",
            description="d",
        )
    assert exc.value.code == 2
    assert "--mask-format must be one of" in capsys.readouterr().err
    # auto batches by image size: one 480x360 image per CPU forward, 16 of 512x512 on a GPU
    assert forward_batch(480 * 360, use_gpu=False) == 1
    assert forward_batch(16 * 16, use_gpu=False) == 64  # small images: stacked, at most 64
    assert forward_batch(512 * 512, use_gpu=True) == 16
    assert forward_batch(8000 * 8000, use_gpu=True) == 1
    assert cfg.call_rows(use_gpu=False, pixels=480 * 360) == 8  # at least 8 per call
    assert cfg.call_rows(use_gpu=False, pixels=16 * 16) == 64
    assert cfg.call_rows(use_gpu=True, pixels=512 * 512) == 16
    flags = SegmentConfig(input="a", output="b", batch_size=4, rows_per_call=2)
    assert flags.call_rows(use_gpu=False, pixels=16 * 16) == 4  # never less than a batch
    calls = SegmentConfig(input="a", output="b", rows_per_call=2)
    assert calls.call_rows(use_gpu=False, pixels=16 * 16) == 2  # the auto batch fits the call
    with pytest.raises(ValueError, match="--num-workers '3-2': a range needs 0 <= MIN <= MAX"):
        SegmentConfig(input="a", output="b", num_workers="3-2")
    with pytest.raises(ValueError, match="--tile-overlap"):
        SegmentConfig(input="a", output="b", tile_size=64, tile_overlap=64)
    with pytest.raises(ValueError, match="MAX >= 1"):
        SegmentConfig(input="a", output="b", num_workers="0-0")


# --- decode and predict ----------------------------------------------------------------------
def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_decode_batch_keeps_going_past_bad_files(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "ok.png").write_bytes(_png(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)))
    (tmp_path / "gray.png").write_bytes(_png(rng.integers(0, 256, (4, 6), dtype=np.uint8)))
    (tmp_path / "bad.png").write_bytes(b"nope")
    inputs = [str(tmp_path / n) for n in ("ok.png", "bad.png", "gray.png", "missing.png")]
    out = decode_images(
        pa.table({"input": inputs, "relative_path": ["1", "2", "3", "4"]}), channels=3
    )
    rows = out.to_pylist()
    assert [r["error"] is None for r in rows] == [True, False, True, False]
    assert "bad.png" in rows[1]["error"] and "missing.png" in rows[3]["error"]
    assert (rows[0]["height"], rows[0]["width"], rows[0]["channels"]) == (5, 7, 3)
    assert (rows[2]["height"], rows[2]["width"], rows[2]["channels"]) == (4, 6, 3)
    assert len(rows[2]["pixels"]) == 4 * 6 * 3 and rows[0]["relative_path"] == "1"


def test_predictor_mixed_sizes_tiles_and_failures(tmp_path):
    ckpt = make_checkpoint(tmp_path / "unet.pt", CLASSES, base_width=4, depth=2)
    options = PredictorOptions(tile_size=48, tile_overlap=8, batch_size=2, confidence_map=True)
    predictor = Predictor(ckpt.read_bytes(), options)
    rng = np.random.default_rng(1)
    images = [
        rng.integers(0, 256, (20, 30, 3), dtype=np.uint8),
        None,
        rng.integers(0, 256, (20, 30, 3), dtype=np.uint8),
        rng.integers(0, 256, (17, 9, 3), dtype=np.uint8),
        rng.integers(0, 256, (20, 30, 3), dtype=np.uint8),
        rng.integers(0, 256, (70, 50, 3), dtype=np.uint8),  # > tile_size: tiled
    ]
    results = predictor.predict_images(images)
    assert results[1] is None
    loaded = load_checkpoint(ckpt)
    model = prepare_for_inference(loaded.model, "cpu")
    for image, result in zip(images, results, strict=True):
        if image is None:
            continue
        want = predict(model, image, preprocess=loaded.preprocess, tile_size=48, tile_overlap=8)
        np.testing.assert_array_equal(result.mask, want.mask)
        assert result.mean_confidence == pytest.approx(float(want.confidence.mean()), abs=1e-3)
        assert result.confidence_map.shape == image.shape[:2]


def test_predictor_passes_stack_equal_sizes_and_compile_reaches_the_model(tmp_path):
    ckpt = make_checkpoint(tmp_path / "unet.pt", CLASSES, base_width=4, depth=2)
    predictor = Predictor(ckpt.read_bytes(), PredictorOptions(tile_size=48, batch_size=0))
    small, tiled = (8, 8, 3), (70, 50, 3)
    shapes = [small, None, tiled, small, (20, 30, 3), None, small]
    # no image first (together), the tiled one alone, equal sizes stacked in order
    assert predictor.passes(shapes) == [[1, 5], [2], [0, 3, 6], [4]]
    two = Predictor(ckpt.read_bytes(), PredictorOptions(tile_size=48, batch_size=2))
    assert two.passes(shapes) == [[1, 5], [2], [0, 3], [6], [4]]
    assert not isinstance(predictor.model, CompiledModel)
    compiled = Predictor(ckpt.read_bytes(), PredictorOptions(compile=True))
    assert isinstance(compiled.model, CompiledModel)  # compiles at its first batch


# --- writer and manifest ---------------------------------------------------------------------
def test_encode_mask_formats():
    mask = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    assert np.array_equal(
        np.asarray(
            Image.open(io.BytesIO(encode_mask(mask, mask_format="indices", class_map=CLASSES)))
        ),
        mask,
    )
    values = np.asarray(
        Image.open(io.BytesIO(encode_mask(mask, mask_format="values", class_map=CLASSES)))
    )
    assert values.tolist() == [[0, 128], [255, 0]]
    img = Image.open(io.BytesIO(encode_mask(mask, mask_format="color", class_map=CLASSES)))
    assert img.mode == "P" and np.array_equal(np.asarray(img), mask)
    assert tuple(img.getpalette()[3:6]) == tuple(CLASSES.colors[1])


def test_mask_writer_rows_parts_and_final_manifest(tmp_path):
    out = tmp_path / "out"
    options = WriterOptions(
        output=str(out),
        class_map=CLASSES.to_dict(),
        model_name="unet",
        model_version="7",
        model_uri="models:/unet/7",
        job_id="j1",
    )
    mask = np.array([[0, 1, 1], [2, 2, 2]], dtype=np.uint8)
    batch = pa.table(
        {
            "input": ["/in/a/x.jpg", "/in/y.png"],
            "relative_path": ["a/x.jpg", "y.png"],
            "height": pa.array([2, 0], pa.int32()),
            "width": pa.array([3, 0], pa.int32()),
            "channels": pa.array([3, 0], pa.int8()),
            "error": [None, "/in/y.png: empty file"],
            "seconds": [0.5, 0.1],
            "mask": pa.array([mask.tobytes(), b""], pa.large_binary()),
            "confidence_map": pa.array([b"", b""], pa.large_binary()),
            "mean_confidence": [0.75, None],
        }
    )
    table = MaskWriter(options)(batch)
    rows = {r["relative_path"]: r for r in table.to_pylist()}
    ok, bad = rows["a/x.jpg"], rows["y.png"]
    assert ok["status"] == "ok" and ok["output"] == str(out / "masks/a/x.png")
    assert ok["class_fractions"] == pytest.approx(
        {"background": 1 / 6, "cell": 2 / 6, "edge": 3 / 6}
    )
    assert (ok["width"], ok["height"], ok["model_version"], ok["seconds"] > 0.5) == (
        3,
        2,
        "7",
        True,
    )
    assert bad["status"] == "failed" and bad["output"] is None and "empty" in bad["error"]
    assert np.array_equal(np.asarray(Image.open(out / "masks/a/x.png")), mask)
    assert [p.name for p in (out / "manifest").iterdir()] == [
        layout.part_name(["/in/a/x.jpg", "/in/y.png"], "j1")
    ]
    assert not list(out.rglob(".*"))  # no temporary file left behind
    assert mask_key("x/y.v2.JPEG") == "x/y.v2.png"
    back = manifest.latest_rows(str(out)).sort_by("relative_path").to_pylist()
    assert [(r["relative_path"], r["status"], r["job_id"]) for r in back] == [
        ("a/x.jpg", "ok", "j1"), ("y.png", "failed", "j1"),
    ]  # fmt: skip


# --- model source ----------------------------------------------------------------------------
def test_local_checkpoint_sources(tmp_path, monkeypatch):
    ckpt = make_checkpoint(tmp_path / "model/artifacts/unet.pt", CLASSES)
    for source in (str(ckpt), str(tmp_path / "model")):
        resolved = resolve_model(source)
        assert resolved.version is None and resolved.uri_resolved == source
        assert fetch_checkpoint_bytes(resolved) == ckpt.read_bytes()
    (tmp_path / "two/a").mkdir(parents=True)
    (tmp_path / "two/b").mkdir()
    (tmp_path / "two/a/unet.pt").write_bytes(b"1")
    (tmp_path / "two/b/unet.pt").write_bytes(b"2")
    with pytest.raises(ModelSourceError, match="not a logged unet model"):
        find_checkpoint(tmp_path / "two")  # no rglob: checkpoints deeper down are not taken
    with pytest.raises(ModelSourceError, match="no such checkpoint"):
        fetch_checkpoint_bytes(resolve_model(str(tmp_path / "missing.pt")))
    with pytest.raises(ModelSourceError, match="alias"):
        resolve_model("models:/unet/Production")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path}/mlflow.db"


def test_alias_is_pinned_to_a_version(tmp_path, mlflow_uri):
    from mlflow import MlflowClient

    client = MlflowClient()
    client.create_registered_model("seg")
    ckpt = make_checkpoint(tmp_path / "v/unet.pt", CLASSES)
    for _ in range(2):
        client.create_model_version("seg", source=str(tmp_path / "v"))
    client.set_registered_model_alias("seg", "champion", "1")
    resolved = resolve_model("models:/seg@champion")
    client.set_registered_model_alias("seg", "champion", "2")  # the alias moves mid-job
    assert (resolved.uri_resolved, resolved.version, resolved.alias) == (
        "models:/seg/1",
        "1",
        "champion",
    )
    assert fetch_checkpoint_bytes(resolved) == ckpt.read_bytes()
    assert resolve_model("models:/seg/2").version == "2"
    with pytest.raises(ModelSourceError, match="no version"):
        resolve_model("models:/seg/9")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(mask_format="indices", tta="none", tile_size=512, tile_overlap=64),
        dict(
            mask_format="color", tta="dihedral", tile_size=0, tile_overlap=0, exif_transpose=False
        ),  # fmt: skip
    ],
)
def test_output_settings_read_back(kwargs):
    text = layout.output_settings(**kwargs)
    values = layout.parse_settings(text)
    assert values["mask_format"] == kwargs["mask_format"]
    assert values["tta"] == {"none": "0", "flip": "1"}.get(kwargs["tta"], kwargs["tta"])
    assert values["tile_size"] == str(kwargs["tile_size"])
    assert values.get("exif_transpose", "1") == ("1" if kwargs.get("exif_transpose", True) else "0")
    assert layout.parse_settings(None) == layout.parse_settings("") == {}
