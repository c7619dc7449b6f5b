"""The model stage: a callable class that Ray Data runs in a pool of (GPU or CPU) actors.

Each actor rebuilds the UNet once, in ``__init__``, from checkpoint bytes the driver put in the
object store, then predicts batches. Equal-size images are stacked into one forward pass;
images larger than ``tile_size`` go through unet_core's overlapping-tile prediction; nothing is
resized. Normalisation (of stacked images here, of tiles in unet_core.predict), the forward pass
(BatchNorm folded, bf16 autocast or fp16 on older GPUs, channels-last, inference mode) and the
class selection run on the device: uint8 pixels go there (pinned memory on CUDA) and only uint8
masks come back. Images and tiles are batched by size (`jobs.common.resources.forward_batch`).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from jobs.common.devices import require_cuda
from jobs.common.resources import forward_batch
from jobs.inference.decode import image_from_row
from unet_core.checkpoint import load_checkpoint
from unet_core.inference_device import enable_cudnn_benchmark, prepare_for_inference, to_device
from unet_core.predict import needs_tiles, predict, predict_tensor
from unet_core.transforms import normalize_batch

logger = logging.getLogger(__name__)

PREDICTED_FIELDS = [
    pa.field("mask", pa.large_binary()),
    pa.field("confidence_map", pa.large_binary()),
    pa.field("mean_confidence", pa.float64()),
    pa.field("predicted_on", pa.string()),
    pa.field("tiled", pa.bool_()),
]
"""Columns the model stage appends: ``mask`` and ``confidence_map`` as raw (H, W) uint8 bytes
(``confidence_map`` empty unless asked for), ``mean_confidence``, ``predicted_on``, the Ray
node id of the actor, and ``tiled``, whether the image was predicted in tiles (null: no
prediction)."""


@dataclass(frozen=True)
class PredictorOptions:
    """How the actors predict (everything but the weights)."""

    tile_size: int = 512
    """Tile images larger than this on either side; 0 = never."""
    compile: bool = False
    """torch.compile the model (`unet_core.compiled`)."""
    tile_overlap: int = 64
    """Overlap between tiles in pixels."""
    tta: str = "none"
    """Test-time augmentation mode (`unet_core.tta.TTA_MODES`)."""
    amp: bool | None = None
    """bf16 autocast: None = automatic (CUDA, or CPUs with native bf16)."""
    use_gpu: bool = False
    """Run on CUDA (the actor was given a GPU)."""
    torch_threads: int = 0
    """Intra-op threads on CPU; 0 = keep torch's setting."""
    batch_size: int = 0
    """Most images (or tiles) stacked into one forward pass; 0 = by their size
    (`jobs.common.resources.forward_batch`)."""
    confidence_map: bool = False
    """Return the 8-bit confidence map of every image (for --confidence)."""
    keep_pixels: bool = False
    """Keep the decoded pixels in the rows (the writer needs them for overlays)."""


@dataclass
class ImagePrediction:
    mask: np.ndarray
    """(H, W) uint8 class indices."""
    mean_confidence: float
    """Mean over pixels of the chosen class's softmax probability."""
    confidence_map: np.ndarray | None = None
    """(H, W) uint8, round(255 * confidence), when asked for."""
    tiled: bool = False
    """Predicted in overlapping tiles (what the manifest row records of its tiling)."""


def _node_id() -> str | None:
    """The Ray node this actor runs on (None outside Ray)."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # noqa: BLE001
        return None


class Predictor:
    """Ray Data callable class: ``ds.map_batches(Predictor, compute=ActorPoolStrategy(...))``."""

    def __init__(self, checkpoint: object, options: PredictorOptions) -> None:
        """``checkpoint``: unet_core checkpoint bytes, or the ObjectRef the driver put them in."""
        if not isinstance(checkpoint, (bytes, bytearray)):
            import ray  # an ObjectRef put by the driver: fetched once per actor

            checkpoint = ray.get(checkpoint)
        loaded = load_checkpoint(bytes(checkpoint))
        self.options = options
        if options.use_gpu:
            require_cuda("a predictor actor")
            self.device = torch.device("cuda")
        else:
            self.device = torch.device("cpu")
            if options.torch_threads:
                torch.set_num_threads(options.torch_threads)
        enable_cudnn_benchmark(self.device)  # batches and tiles of a few sizes repeat
        self.model = prepare_for_inference(loaded.model, self.device, compile=options.compile)
        self.preprocess = loaded.preprocess
        self.num_classes = loaded.model_config.num_classes
        self.node_id = _node_id()
        logger.info(
            "predictor ready on %s (pid %d, %d torch threads, %d classes)",
            self.device,
            os.getpid(),
            torch.get_num_threads(),
            self.num_classes,
        )

    # --- prediction on arrays (usable without Ray) ---------------------------------------------
    def _batch(self, pixels: int) -> int:
        """Images (tiles) of ``pixels`` pixels per forward pass."""
        return self.options.batch_size or forward_batch(pixels, use_gpu=self.options.use_gpu)

    def _needs_tiles(self, shape: tuple[int, ...]) -> bool:
        return needs_tiles(shape[0], shape[1], self.options.tile_size)

    def _forward(self, images: list[np.ndarray]) -> list[ImagePrediction]:
        """One forward pass over equal-size HxWxC images (uint8; a native model's own type)."""
        stacked = np.stack(images)  # 16-bit as int32: exact, and every device has its kernels
        stacked = stacked.astype(np.int32) if stacked.dtype == np.uint16 else stacked
        x = to_device(torch.from_numpy(stacked), self.device)  # (B, H, W, C)
        x = normalize_batch(x, self.preprocess)  # (B, C, H, W), on the device
        classes, confidence = predict_tensor(
            self.model, x, tta=self.options.tta, amp=self.options.amp
        )
        means = confidence.float().mean(dim=(1, 2)).cpu().tolist()
        conf_u8 = None
        if self.options.confidence_map:
            conf_u8 = (confidence.float() * 255.0).round_().to(torch.uint8).cpu().numpy()
        masks = classes.cpu().numpy()  # (B, H, W) uint8: the only full-size copy back
        return [
            ImagePrediction(masks[i], float(means[i]), None if conf_u8 is None else conf_u8[i])
            for i in range(len(images))
        ]

    def _tiled(self, image: np.ndarray) -> ImagePrediction:
        s = self.options
        pred = predict(
            self.model,
            image,
            preprocess=self.preprocess,
            tta=s.tta,
            tile_size=s.tile_size,
            tile_overlap=s.tile_overlap,
            amp=s.amp,
            tile_batch=self._batch(s.tile_size * s.tile_size),
        )
        conf_u8 = None
        if s.confidence_map:
            conf_u8 = np.rint(pred.confidence * 255.0).astype(np.uint8)
        return ImagePrediction(pred.mask, float(pred.confidence.mean()), conf_u8, pred.tiled)

    def passes(self, shapes: list[tuple[int, ...] | None]) -> list[list[int]]:
        """The rows of each forward pass over images of ``shapes`` (None: no image): the rows
        without an image together, each image that needs tiles alone, equal-size images
        stacked `_batch` at a time, in order of first appearance."""
        missing = [i for i, shape in enumerate(shapes) if shape is None]
        out = [missing] if missing else []
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, shape in enumerate(shapes):
            if shape is None:
                continue
            if self._needs_tiles(shape):
                out.append([i])
            else:
                groups.setdefault(shape, []).append(i)
        for (h, w, *_), indices in groups.items():
            batch = self._batch(h * w)
            out += [indices[start : start + batch] for start in range(0, len(indices), batch)]
        return out

    def predict_images(self, images: list[np.ndarray | None]) -> list[ImagePrediction | str | None]:
        """A prediction per image, an error message where prediction failed, None for None."""
        out: list[ImagePrediction | str | None] = [None] * len(images)
        for chunk in self.passes([None if im is None else im.shape for im in images]):
            first = images[chunk[0]]
            if first is None:
                continue
            if self._needs_tiles(first.shape):
                results = self._guarded(lambda im=first: [self._tiled(im)], 1)
            else:
                results = self._guarded(
                    lambda c=chunk: self._forward([images[j] for j in c]), len(chunk)
                )
            if len(chunk) > 1 and all(isinstance(r, str) for r in results):
                # e.g. out of memory for the stack: isolate the failure image by image
                results = [
                    self._guarded(lambda j=j: self._forward([images[j]]), 1)[0] for j in chunk
                ]
            for j, result in zip(chunk, results, strict=True):
                out[j] = result
        return out

    def row_passes(self, batch: pa.Table) -> list[list[int]]:
        """`passes` of a decoded batch (the decode stage's columns)."""
        errors = batch.column("error").is_valid().to_pylist()
        sizes = zip(
            batch.column("height").to_pylist(),
            batch.column("width").to_pylist(),
            batch.column("channels").to_pylist(),
            strict=True,
        )
        return self.passes([None if bad else size for bad, size in zip(errors, sizes, strict=True)])

    @staticmethod
    def _guarded(fn, count: int) -> list[ImagePrediction | str]:
        try:
            return fn()
        except Exception as exc:  # a failed prediction is a row error; the job goes on
            logger.exception("prediction failed")
            return [f"prediction failed ({type(exc).__name__}: {exc})"] * count

    # --- Ray Data entry -------------------------------------------------------------------------
    def __call__(self, batch: pa.Table) -> pa.Table:
        start = time.perf_counter()
        pixels = batch.column("pixels")
        heights = batch.column("height").to_pylist()
        widths = batch.column("width").to_pylist()
        channels = batch.column("channels").to_pylist()
        dtypes = batch.column("dtype").to_pylist()
        errors = batch.column("error").to_pylist()
        images = [
            None
            if errors[i] is not None
            else image_from_row(pixels[i], heights[i], widths[i], channels[i], dtypes[i])
            for i in range(batch.num_rows)
        ]
        results = self.predict_images(images)
        share = (time.perf_counter() - start) / max(1, batch.num_rows)
        masks, conf_maps, means, tiled = [], [], [], []
        for i, result in enumerate(results):
            if isinstance(result, ImagePrediction):
                masks.append(result.mask.tobytes())
                cm = result.confidence_map
                conf_maps.append(cm.tobytes() if cm is not None else b"")
                means.append(result.mean_confidence)
                tiled.append(result.tiled)
            else:
                if isinstance(result, str):
                    errors[i] = f"{batch.column('input')[i].as_py()}: {result}"
                masks.append(b"")
                conf_maps.append(b"")
                means.append(None)
                tiled.append(None)
        seconds = [s + share for s in batch.column("seconds").to_pylist()]
        out = batch
        if not self.options.keep_pixels:
            out = out.drop_columns(["pixels"])
        out = out.set_column(
            out.schema.get_field_index("error"), "error", pa.array(errors, pa.string())
        )
        out = out.set_column(
            out.schema.get_field_index("seconds"), "seconds", pa.array(seconds, pa.float64())
        )
        nodes = [self.node_id] * batch.num_rows
        columns = (masks, conf_maps, means, nodes, tiled)
        for field, values in zip(PREDICTED_FIELDS, columns, strict=True):
            out = out.append_column(field, pa.array(values, type=field.type))
        return out
