"""The exported files: a `torch.export` program with dynamic batch, height and width, written as
ONNX (torch.onnx's dynamo exporter) or as pt2 (`torch.export.save`), and read back to run.

Both take ``input`` (N, C, H, W) float32, normalised as in training, and give ``logits``
(N, K, H, W). H and W must be multiples of 2**depth and at least 2 * 2**depth: the exported
graph has no padding branch (`unet_core.model.UNet` pads other sizes in eager mode only), and
torch.export specialises a bottleneck of one pixel away. Both carry the same metadata (class
names and values, mean/std and the whole preprocessing, in_channels, the size rule): ONNX in ``metadata_props``, pt2 in
the extra file ``unet.json``. onnx, onnxscript and onnxruntime are imported only here, inside
the ONNX functions (the optional `export` extra).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unet_core.checkpoint import LoadedModel

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
PT2_METADATA = "unet.json"
"""Extra file of a pt2 archive holding the metadata (`torch.export.load(f, extra_files=...)`)."""
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
INSTALL_HINT = "pip install 'unet-ray[export]'"

Runner = Callable[[np.ndarray], np.ndarray]
"""(N, C, H, W) float32 -> (N, K, H, W) float32 logits."""


class ExportDependencyError(RuntimeError):
    """A package that the ONNX export or its check needs is not installed."""

    exit_kind = "dependency"  # a job ends with exit code 2 (jobs.common.exits)


def require_onnx() -> None:
    """Import the ONNX packages now, before any work, or say how to install them."""
    missing = []
    for name in ONNX_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportDependencyError(
            f"--format onnx needs {', '.join(missing)} (not installed): {INSTALL_HINT}"
        )


QUIET_LOGGERS = (
    "onnxscript",  # an INFO line per folded constant
    "onnx_ir",
    "torch.onnx._internal.exporter._registration",  # "torchvision is not installed" warnings
)


def quiet_exporter_logs(level: str) -> None:
    """The exporters' own chatter down to errors, unless the job runs at DEBUG."""
    if level.upper() != "DEBUG":
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)


def spatial_multiple(loaded: LoadedModel) -> int:
    """What H and W of an exported model must be multiples of: 2**depth."""
    return 2**loaded.model_config.depth


def _input_layout(pre) -> str:
    """The input's normalisation in words, by the preprocessing scheme."""
    if pre.scheme == "clip_zscore":
        return (
            "NCHW float32, normalised per channel in the image's own values (uint8, uint16, "
            "float): (clip(pixel, clip_low, clip_high) - mean) / std (see preprocess)"
        )
    return "NCHW float32, normalised per channel: (pixel / 255 - mean) / std"


def metadata(loaded: LoadedModel, source: dict[str, Any]) -> dict[str, str]:
    """String key/values describing the file's contract; ``source`` (model URI, version,
    checkpoint digest...) is added where its values are not None."""
    cfg, pre, m = loaded.model_config, loaded.preprocess, spatial_multiple(loaded)
    data = {
        "producer": "unet-ray",
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "input_layout": _input_layout(pre),
        "output_layout": "NCHW float32 logits, one channel per class (softmax over dim 1)",
        "in_channels": str(cfg.in_channels),
        "num_classes": str(cfg.num_classes),
        "spatial_multiple": str(m),
        "min_spatial_size": str(2 * m),
        "size_rule": f"H and W must be multiples of {m} (2**depth) and at least {2 * m}",
        "class_names": json.dumps(loaded.class_map.names),
        "class_values": json.dumps(loaded.class_map.values),
        "class_map": json.dumps(loaded.class_map.to_dict()),
        "preprocess_mean": json.dumps(list(pre.mean)),
        "preprocess_std": json.dumps(list(pre.std)),
        "preprocess_scheme": pre.scheme,
        "preprocess": json.dumps(pre.to_dict()),  # the whole of it: PreprocessConfig.from_dict
        "model_config": json.dumps(cfg.to_dict()),
    }
    data.update({k: str(v) for k, v in source.items() if v is not None})
    return data


def export_program(model: torch.nn.Module, sample: torch.Tensor, multiple: int):
    """`torch.export` of ``model`` (eval, fp32, CPU) with dynamic batch and sides ``multiple``
    * k, k >= 2 (the shapes print as ``16*height_blocks``)."""
    from torch.export import Dim

    height = multiple * Dim("height_blocks", min=2)
    width = multiple * Dim("width_blocks", min=2)
    dynamic = ({0: Dim("batch", min=1), 2: height, 3: width},)
    with torch.no_grad():
        return torch.export.export(model, (sample,), dynamic_shapes=dynamic)


def _replace(tmp: Path, path: Path) -> None:
    try:
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _temp_path(path: Path) -> Path:
    """A hidden sibling with the same suffix (torch.export.save warns about names not
    ending in .pt2)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")


def write_onnx(
    program, path: Path, meta: dict[str, str], *, opset: int | None = None
) -> dict[str, Any]:
    """The program as one ONNX file (weights inside, not external data), written atomically;
    returns what the summary records (the opset)."""
    import torch.onnx

    with warnings.catch_warnings():  # torch's own use of a deprecated pytree class
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        onnx_program = torch.onnx.export(
            program,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            verbose=False,  # no progress lines on stdout: its last line is the job's JSON
        )
    onnx_program.model.metadata_props.update(meta)
    onnx_program.model.doc_string = "UNet segmentation logits (unet-ray). " + meta["size_rule"]
    tmp = _temp_path(path)
    onnx_program.save(tmp, external_data=False)
    _replace(tmp, path)
    return {"opset": int(onnx_program.model.opset_imports.get("", 0)) or None}


def write_pt2(program, path: Path, meta: dict[str, str]) -> dict[str, Any]:
    """The program as a `torch.export.save` archive with ``unet.json``, written atomically."""
    tmp = _temp_path(path)
    torch.export.save(program, tmp, extra_files={PT2_METADATA: json.dumps(meta)})
    _replace(tmp, path)
    return {"device": "cpu"}


def onnx_runner(path: Path) -> Runner:
    """The ONNX file checked (`onnx.checker`) and run in onnxruntime on the CPU provider."""
    import onnx
    import onnxruntime

    onnx.checker.check_model(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(x: np.ndarray) -> np.ndarray:
        return session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]

    return run


def pt2_runner(path: Path) -> Runner:
    """The pt2 file reloaded with `torch.export.load` and run as a module."""
    module = torch.export.load(path).module()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy()

    return run


RUNNERS: dict[str, Callable[[Path], Runner]] = {"onnx": onnx_runner, "pt2": pt2_runner}


def read_metadata(path: str | os.PathLike, fmt: str) -> dict[str, str]:
    """The metadata an exported file carries (``metadata_props`` or ``unet.json``)."""
    if fmt == "onnx":
        import onnx

        model = onnx.load(os.fspath(path), load_external_data=False)
        return {p.key: p.value for p in model.metadata_props}
    extra = {PT2_METADATA: ""}
    torch.export.load(os.fspath(path), extra_files=extra)
    return json.loads(extra[PT2_METADATA])
