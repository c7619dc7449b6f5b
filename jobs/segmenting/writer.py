"""The encode/write stage: PNG masks (and overlays, confidence maps) under keys from the input.

Masks (PNG), overlays (JPEG) and confidence maps (8-bit PNG) under the keys and folders of
`jobs.segmenting.layout`. Every file is written atomically
(``jobs.common.fs.write_bytes_atomic``) and the mask last, so a mask under its final name means the
input's files are complete; its manifest row (in the batch's part, written after all masks
of the batch) says which model and settings made them, and whether the image was tiled
(`jobs.segmenting.layout.row_settings`), which a rerun checks.
"""

from __future__ import annotations

import io
import logging
import posixpath
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from PIL import Image

from jobs.common import fs
from jobs.inference.decode import image_from_row
from jobs.segmenting import manifest
from jobs.segmenting.layout import (
    CONFIDENCE_DIR,
    MASKS_DIR,
    OVERLAYS_DIR,
    mask_key,
    overlay_key,
    row_settings,
)
from unet_core.classes import ClassMap
from unet_core.image_decode import display_image
from unet_core.viz import overlay

logger = logging.getLogger(__name__)

PNG_COMPRESS_LEVEL = 1
"""zlib level 1: masks are mostly flat areas, so level 1 is ~5x faster than Pillow's 6 for a
few percent more bytes."""


def encode_png(array: np.ndarray, *, palette: np.ndarray | None = None) -> bytes:
    """(H, W) uint8 / uint16 -> PNG bytes (8-bit L, 16-bit, or palette P when given colours)."""
    array = np.ascontiguousarray(array)
    if palette is not None:
        img = Image.frombytes(
            "P", (array.shape[1], array.shape[0]), array.astype(np.uint8).tobytes()
        )
        lut = np.zeros((256, 3), dtype=np.uint8)
        lut[: len(palette)] = palette
        img.putpalette(lut.reshape(-1).tolist())
    elif array.dtype == np.uint16:
        img = Image.fromarray(array)  # mode I;16
    else:
        img = Image.fromarray(array.astype(np.uint8, copy=False))
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def encode_mask(indices: np.ndarray, *, mask_format: str, class_map: ClassMap) -> bytes:
    """Class indices -> PNG: ``indices`` (0..K-1), ``values`` (the class map's pixel values, as
    in training masks) or ``color`` (a palette PNG: pixel = index, shown in the class colours)."""
    if mask_format == "indices":
        return encode_png(indices)
    if mask_format == "values":
        return encode_png(class_map.encode_values(indices))
    if mask_format == "color":
        return encode_png(indices, palette=class_map.colors)
    raise ValueError(f"unknown mask format {mask_format!r}; use indices, values or color")


def class_fractions(mask: np.ndarray, num_classes: int) -> list[float]:
    """Share of the pixels predicted as each class."""
    counts = np.bincount(mask.reshape(-1), minlength=num_classes)[:num_classes]
    return (counts / max(1, mask.size)).tolist()


@dataclass(frozen=True)
class WriterOptions:
    """What the write stage needs; plain data so Ray can ship it to tasks."""

    output: str
    """Output folder or s3:// prefix."""
    class_map: dict
    """ClassMap.to_dict() of the model."""
    mask_format: str = "indices"
    """--mask-format: indices, values or color."""
    overlays: bool = False
    """Also write overlays/ (JPEG): the input blended with the class colours."""
    confidence: bool = False
    """Also write confidence/ (8-bit PNG)."""
    endpoint_url: str | None = None
    """S3-compatible endpoint of an s3:// output."""
    model_name: str | None = None
    """Registered model name, recorded per row (None for a checkpoint path)."""
    model_version: str | None = None
    """Registered model version, recorded per row."""
    model_uri: str | None = None
    """The resolved model URI (an alias made a version) or checkpoint path, recorded per row."""
    checkpoint_sha256: str | None = None
    """The weights' digest, recorded per row: what a rerun compares."""
    settings: str | None = None
    """`jobs.segmenting.layout.output_settings` of the run, recorded per row as its
    `row_settings` (the tile size only where the image was tiled)."""
    job_id: str = ""
    """Stamped on every row and carried by every temporary file name."""


class MaskWriter:
    """Encodes and writes one batch of predictions; returns its manifest rows."""

    def __init__(self, options: WriterOptions) -> None:
        self.s = options
        self.class_map = ClassMap.from_dict(options.class_map)
        self.filesystem, self.root = fs.resolve(options.output, endpoint_url=options.endpoint_url)

    def _path(self, folder: str, key: str) -> str:
        return posixpath.join(self.root, folder, key)

    def uri(self, folder: str, key: str) -> str:
        return fs.join(self.s.output, folder, key)

    def write_row(self, row: dict, pixels: pa.Scalar | None) -> dict:
        """Write one input's files; the manifest row (``ok``, or ``failed`` with the error)."""
        start = time.perf_counter()
        rel = row["relative_path"]
        out = manifest.base_row(
            input=row["input"],
            relative_path=rel,
            model_name=self.s.model_name,
            model_version=self.s.model_version,
            model_uri=self.s.model_uri,
            checkpoint_sha256=self.s.checkpoint_sha256,
            settings=row_settings(self.s.settings, tiled=row.get("tiled")),
            job_id=self.s.job_id,
            predicted_on=row.get("predicted_on"),
            exif_orientation=row.get("exif_orientation"),  # null when the input was unreadable
        )
        error = row.get("error")
        if error is None:
            try:
                h, w = row["height"], row["width"]
                mask = np.frombuffer(row["mask"], dtype=np.uint8).reshape(h, w)
                if self.s.overlays and pixels is not None:
                    image = display_image(
                        image_from_row(pixels, h, w, row["channels"], row.get("dtype"))
                    )
                    blended = overlay(image, mask, self.class_map.colors, alpha=0.5)
                    buffer = io.BytesIO()
                    Image.fromarray(blended).save(buffer, format="JPEG", quality=90)
                    fs.write_bytes_atomic(
                        self.filesystem,
                        self._path(OVERLAYS_DIR, overlay_key(rel)),
                        buffer.getvalue(),
                        owner=self.s.job_id,
                    )
                if self.s.confidence and row.get("confidence_map"):
                    conf = np.frombuffer(row["confidence_map"], dtype=np.uint8).reshape(h, w)
                    fs.write_bytes_atomic(
                        self.filesystem,
                        self._path(CONFIDENCE_DIR, mask_key(rel)),
                        encode_png(conf),
                        owner=self.s.job_id,
                    )
                data = encode_mask(mask, mask_format=self.s.mask_format, class_map=self.class_map)
                # The mask last: its presence under the final name marks the input as done.
                fs.write_bytes_atomic(
                    self.filesystem, self._path(MASKS_DIR, mask_key(rel)), data, owner=self.s.job_id
                )
                fractions = class_fractions(mask, self.class_map.num_classes)
                out.update(
                    status=manifest.OK,
                    output=self.uri(MASKS_DIR, mask_key(rel)),
                    width=w,
                    height=h,
                    class_fractions=dict(zip(self.class_map.names, fractions, strict=True)),
                    mean_confidence=row["mean_confidence"],
                )
            except Exception as exc:  # a failed write is a row error; the job goes on
                error = f"{row['input']}: cannot write outputs ({type(exc).__name__}: {exc})"
                logger.exception("write failed for %s", row["input"])
        if error is not None:
            out.update(status=manifest.FAILED, error=error)
            if row.get("height"):
                out.update(width=row["width"], height=row["height"])
        out["seconds"] = float(row.get("seconds") or 0.0) + time.perf_counter() - start
        return out

    def rows(self, batch: pa.Table) -> pa.Table:
        """Write the files of a batch of predictions; its manifest rows (no part written)."""
        has_pixels = "pixels" in batch.column_names
        columns = [c for c in batch.column_names if c != "pixels"]
        rows = batch.select(columns).to_pylist()
        pixels = batch.column("pixels") if has_pixels else None
        out = [
            self.write_row(row, pixels[i] if pixels is not None else None)
            for i, row in enumerate(rows)
        ]
        return manifest.rows_to_table(out, self.class_map.names)

    def write_part(self, table: pa.Table) -> None:
        """A manifest part per batch, named by its inputs: a retried or rerun batch replaces
        its own part."""
        manifest.write_part(
            self.s.output, table, job_id=self.s.job_id, endpoint_url=self.s.endpoint_url
        )

    def finish(self, tables: list[pa.Table]) -> pa.Table:
        """The manifest part of the batches ``tables`` (`rows` of each); `RESULT_COLUMNS` of it."""
        table = pa.concat_tables(tables)
        self.write_part(table)
        return table.select(RESULT_COLUMNS)

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Files and manifest part of one batch; its manifest rows."""
        table = self.rows(batch)
        self.write_part(table)
        return table


RESULT_COLUMNS = ["input", "status", "error"]
"""What the write stage hands back to the driver (the full rows are in the manifest parts)."""


def write_failed_rows(ds, options: WriterOptions) -> list[dict[str, str]]:
    """Write ``failed`` manifest rows for the rows of ``ds`` (input, relative_path, error: the
    inputs the work list rejected) as one part; returns up to 10 of them (input, error)."""
    table = pa.concat_tables(list(ds.iter_batches(batch_size=None, batch_format="pyarrow")))
    class_map = ClassMap.from_dict(options.class_map)
    rows = [
        manifest.failed_row(
            r["input"],
            r["relative_path"],
            r["error"],
            model_name=options.model_name,
            model_version=options.model_version,
            model_uri=options.model_uri,
            checkpoint_sha256=options.checkpoint_sha256,
            settings=options.settings,
            job_id=options.job_id,
        )
        for r in table.to_pylist()
    ]
    part = manifest.rows_to_table(rows, class_map.names)
    manifest.write_part(
        options.output, part, job_id=options.job_id, endpoint_url=options.endpoint_url
    )
    return [{"input": r["input"], "error": r["error"]} for r in rows[:10]]
