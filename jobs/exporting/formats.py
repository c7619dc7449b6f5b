"""The exported files: a `torch.export` program with dynamic batch, height and width, written as
ONNX (torch.onnx's dynamo exporter) or as pt2 (`torch.export.save`), and read back to run.

What the program is comes from `jobs.exporting.graph`: the ``logits`` graph takes ``input``
(N, C, H, W) float32, normalised as in training, and gives ``logits`` (N, K, H, W); the
``uint8-mask`` graph takes ``image`` (N, H, W, C) uint8 and gives ``mask`` (N, H, W), the class
values. Both take every H x W (the eager model's padding and cropping are in the graph). Both
formats carry the same metadata (class names and values, mean/std and the whole preprocessing,
in_channels, the graph kind): ONNX in ``metadata_props``, pt2 in the extra file ``unet.json``.
onnx, onnxscript and onnxruntime are imported only here, inside the ONNX functions (the optional
`export` extra).
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

from jobs.exporting.graph import SPECS, GraphSpec, padding_multiple
from unet_core.checkpoint import LoadedModel

PT2_METADATA = "unet.json"
"""Extra file of a pt2 archive holding the metadata (`torch.export.load(f, extra_files=...)`)."""
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
INSTALL_HINT = "pip install 'unet-ray[export]'"

Runner = Callable[[np.ndarray], np.ndarray]
"""The graph's input -> its output: (N, C, H, W) float32 -> (N, K, H, W) float32 logits, or
(N, H, W, C) uint8 -> (N, H, W) class values."""


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


def _input_layout(pre, graph: str) -> str:
    """The input in words, by the graph and the preprocessing scheme."""
    if graph == "uint8-mask":
        return (
            "NHWC uint8 pixels as the image files hold them (RGB or grayscale); the graph "
            "normalises them: (pixel / 255 - mean) / std"
        )
    if pre.scheme == "clip_zscore":
        return (
            "NCHW float32, normalised per channel in the image's own values (uint8, uint16, "
            "float): (clip(pixel, clip_low, clip_high) - mean) / std (see preprocess)"
        )
    return "NCHW float32, normalised per channel: (pixel / 255 - mean) / std"


def _output_layout(loaded: LoadedModel, graph: str) -> str:
    if graph == "uint8-mask":
        dtype = "uint8" if max(loaded.class_map.values) <= 255 else "uint16"
        return f"NHW {dtype}: each pixel's class value (class_values), the argmax of the logits"
    return "NCHW float32 logits, one channel per class (softmax over dim 1)"


def metadata(loaded: LoadedModel, source: dict[str, Any], graph: str = "logits") -> dict[str, str]:
    """String key/values describing the file's contract; ``source`` (model URI, version,
    checkpoint digest...) is added where its values are not None."""
    cfg, pre, m = loaded.model_config, loaded.preprocess, padding_multiple(loaded.model)
    spec = SPECS[graph]
    data = {
        "producer": "unet-ray",
        "graph": graph,
        "input_name": spec.input_name,
        "output_name": spec.output_name,
        "input_layout": _input_layout(pre, graph),
        "output_layout": _output_layout(loaded, graph),
        "in_channels": str(cfg.in_channels),
        "num_classes": str(cfg.num_classes),
        "any_size": "true",
        "spatial_multiple": str(m),
        "padding": (
            f"inside the graph: H and W padded to a multiple of {m} (reflect; replicate when a "
            "pad is not smaller than its side), the output cropped back: any H x W >= 1"
        ),
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


def export_program(module: torch.nn.Module, sample: torch.Tensor, spec: GraphSpec):
    """`torch.export` of ``module`` (eval, fp32, CPU; a `jobs.exporting.graph` module) with
    dynamic batch, height and width, each >= 1.

    Size-oblivious tracing (``backed_size_oblivious``) keeps torch.export from specialising on
    a side of 1 (a bottleneck of one pixel, a 1-row input): the graph is the same for every
    size, which the check runs at 1 x 1 among others."""
    from torch.export import Dim

    from jobs.common.private_apis import size_oblivious_tracing

    axes = {"NCHW": (2, 3), "NHWC": (1, 2)}[spec.input_layout]
    dynamic = (
        {0: Dim("batch", min=1), axes[0]: Dim("height", min=1), axes[1]: Dim("width", min=1)},
    )
    # row-major strides: a sample made by a transpose (HWC -> CHW) has the strides of another
    # layout, and torch.export then guards on them (H * W != 1 for a 1-channel input)
    sample = torch.empty(sample.shape, dtype=sample.dtype).copy_(sample)
    with torch.no_grad(), size_oblivious_tracing():
        return torch.export.export(module, (sample,), dynamic_shapes=dynamic)


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
            input_names=[meta["input_name"]],
            output_names=[meta["output_name"]],
            opset_version=opset,
            verbose=False,  # no progress lines on stdout: its last line is the job's JSON
        )
    name_dynamic_dims(onnx_program.model, SPECS[meta["graph"]].input_layout)
    onnx_program.model.metadata_props.update(meta)
    onnx_program.model.doc_string = (
        f"UNet segmentation (unet-ray), graph {meta['graph']}: {meta['output_layout']}. "
        f"Any H x W ({meta['padding']})."
    )
    tmp = _temp_path(path)
    onnx_program.save(tmp, external_data=False)
    _replace(tmp, path)
    return {"opset": int(onnx_program.model.opset_imports.get("", 0)) or None}


def name_dynamic_dims(model, input_layout: str) -> None:
    """Name the dynamic sizes of the graph's inputs and outputs ``batch``, ``height`` and
    ``width`` (the exporter calls them s0, s53, ...) for ONNX Runtime and Netron users;
    ``input_layout`` is the graph's (NCHW, NHWC)."""
    import onnx_ir as ir

    words = {"N": "batch", "H": "height", "W": "width"}
    symbols = {
        dim.value: words[letter]
        for letter, dim in zip(input_layout, model.graph.inputs[0].shape, strict=True)
        if letter in words and isinstance(dim, ir.SymbolicDim) and dim.value
    }
    for value in (*model.graph.inputs, *model.graph.outputs):
        if value.shape is not None:
            value.shape = ir.Shape(
                [
                    ir.SymbolicDim(symbols.get(d.value, d.value))
                    if isinstance(d, ir.SymbolicDim)
                    else d
                    for d in value.shape
                ]
            )


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
    name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {name: x})[0]

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
