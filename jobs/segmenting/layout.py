"""The layout of a segment output: where each file lives under ``--output``, the key of each
input's mask, and what a manifest row must record for a rerun to count its mask as done
(`row_settings`, `same_pixels`).

    <output>/masks/<relative path, .png>          one mask per input (written last)
    <output>/overlays/<relative path, .jpg>       --overlays
    <output>/confidence/<relative path, .png>     --confidence
    <output>/manifest/part-<job>-<hash>.parquet   a write batch's rows (`part_name`)
    <output>/manifest/data-<time>-<job>-*.parquet compacted rows (`data_name`)
    <output>/manifest/_leases/<job id>.json       the jobs writing the output now
    <output>/manifest.parquet | manifest.jsonl    the latest row of every input (`final_manifest`)
    <output>/report.html, <output>/report/        the QC report (`jobs.reporting`)

Temporary files are the hidden siblings ``.<name>.<job>-<nonce>.tmp`` of local atomic writes
(`jobs.common.fs.temp_name`); an S3 write is a single PUT and leaves none. Readers skip them
(`is_temporary`); a run removes them by age alone (``--temp-max-age``), see
`jobs.segmenting.listing`.

Every stage imports its names from here, never from the stage that writes the files.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from jobs.common import fs

MASKS_DIR = "masks"
OVERLAYS_DIR = "overlays"
CONFIDENCE_DIR = "confidence"
MANIFEST_DIR = "manifest"
LEASES_DIR = f"{MANIFEST_DIR}/_leases"
"""``_``-prefixed: `pyarrow.dataset` and Ray Data skip it when they read the manifest folder."""
PART_PREFIX = "part-"
DATA_PREFIX = "data-"
REPORT_NAME = "report.html"
ASSETS_DIR = "report"
MANIFEST_FORMATS = ("parquet", "jsonl")
UNTILED = "tiled=0"
"""What a row records in place of ``tile_size=... overlap=...`` for an image predicted whole."""


def mask_key(rel: str) -> str:
    """``a/b.jpg`` -> ``a/b.png``: the mask's path under masks/ (and the confidence map's under
    confidence/), derived from the input's relative path."""
    return posixpath.splitext(rel)[0] + ".png"


def overlay_key(rel: str) -> str:
    """``a/b.png`` -> ``a/b.jpg``: the overlay's path under overlays/."""
    return posixpath.splitext(rel)[0] + ".jpg"


def final_manifest(fmt: str) -> str:
    """The consolidated manifest's name beside the folders: ``manifest.parquet`` or ``.jsonl``."""
    if fmt not in MANIFEST_FORMATS:
        raise ValueError(f"unknown manifest format {fmt!r}; use parquet or jsonl")
    return f"manifest.{fmt}"


def part_name(inputs: Iterable[str], job_id: str = "") -> str:
    """A write batch's manifest part, named by its inputs: a retried batch replaces its own."""
    digest = hashlib.sha1("\n".join(sorted(inputs)).encode()).hexdigest()[:24]
    return f"{PART_PREFIX}{job_id + '-' if job_id else ''}{digest}.parquet"


def data_name(stamp: str, job_id: str, tag: str) -> str:
    """A compacted manifest file of the compaction that started at ``stamp`` (``tag`` tells
    its files apart)."""
    return f"{DATA_PREFIX}{stamp}-{job_id}-{tag}.parquet"


def is_temporary(name: str) -> bool:
    """A file name (no folder) that is a write's temporary sibling, never a result."""
    return fs.is_temp(name)


def output_settings(
    *, mask_format: str, tta: str, tile_size: int, tile_overlap: int, exif_transpose: bool = True
) -> str:
    """The run's settings that can change a mask's pixels (a row records `row_settings` of
    them). Written as before dihedral TTA and EXIF orientation existed where those are at their
    old behaviour, so older outputs still match."""
    tta = {"none": "0", "flip": "1"}.get(tta, tta)
    settings = f"mask_format={mask_format} tta={tta} tile_size={tile_size} overlap={tile_overlap}"
    return settings if exif_transpose else f"{settings} exif_transpose=0"


def row_settings(settings: str | None, *, tiled: bool | None) -> str | None:
    """What an input's manifest row records of the run's `output_settings`: the run's string,
    with `UNTILED` appended for an image predicted whole, which the tile size and overlap did
    not touch (`run_settings` gives the run's string back)."""
    if settings is None or tiled is None or tiled:
        return settings
    return f"{settings} {UNTILED}"


def run_settings(settings: str | None) -> str | None:
    """A row's settings -> the run's `output_settings` (without `UNTILED`)."""
    if settings is None:
        return None
    return " ".join(item for item in settings.split() if item != UNTILED)


def parse_settings(settings: str | None) -> dict[str, str]:
    """A row's `output_settings` string back to its ``name -> value`` pairs (``{}`` for none)."""
    return dict(item.split("=", 1) for item in (settings or "").split() if "=" in item)


def _split_tiling(settings: str | None) -> tuple[dict[str, str], int | None, str | None]:
    """(the settings that touch every pixel, the tile size: 0 = never tiled (`UNTILED`, or no
    tile size), None = unreadable, the overlap)."""
    items = parse_settings(settings)
    untiled = items.pop("tiled", None) == "0"
    tile, overlap = items.pop("tile_size", "0"), items.pop("overlap", None)
    try:
        return items, 0 if untiled else int(tile), overlap
    except ValueError:
        return items, None, overlap


def same_pixels(
    recorded: str | None, ours: str, *, heights: np.ndarray, widths: np.ndarray
) -> np.ndarray:
    """Per mask recorded with the settings ``recorded`` (a row's, one string for all) of an
    image of ``heights`` x ``widths`` (-1: not recorded): whether a run with the settings
    ``ours`` would make the same pixels, so that the mask is done for it.

    Every setting but the tiling must be equal. The tiling counts only where it touched the
    image: one that neither tiles (`UNTILED` recorded, or no larger than either tile size, the
    rule of `unet_core.predict.needs_tiles`) is the same under both; one that either tiles needs
    the same tile size and overlap under both. Sizes not recorded: the strings must be equal."""
    heights, widths = np.asarray(heights), np.asarray(widths)
    exact = np.full(heights.shape, recorded == ours)
    r_items, r_tile, r_overlap = _split_tiling(recorded)
    o_items, o_tile, o_overlap = _split_tiling(ours)
    if r_items != o_items or r_tile is None or o_tile is None:
        return exact
    r_tiled = (r_tile > 0) & ((heights > r_tile) | (widths > r_tile))
    o_tiled = (o_tile > 0) & ((heights > o_tile) | (widths > o_tile))
    same_tiles = (r_tile, r_overlap) == (o_tile, o_overlap)
    same = (r_tiled == o_tiled) & (~r_tiled | same_tiles)
    return np.where((heights >= 0) & (widths >= 0), same, exact)


@dataclass(frozen=True)
class Provenance:
    """What makes a mask: the weights and the output settings."""

    checkpoint_sha256: str
    """Digest of the checkpoint bytes (the manifest's ``checkpoint_sha256``)."""
    settings: str
    """`output_settings` of the run (the manifest's ``settings``)."""
    model_uri: str
    """How the weights were named (models:/NAME/VERSION, a path): for messages only."""

    @property
    def key(self) -> str:
        """Equal for two runs whose masks are interchangeable for every image (live jobs
        compare it; a rerun compares each recorded mask by `same_pixels`)."""
        return f"{self.checkpoint_sha256}|{self.settings}"
