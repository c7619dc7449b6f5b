"""What a segmentation run has to do: the inputs (listed under --input, or read from
--input-list), and which of them to segment, to skip (their mask is there) or to reject (two
inputs would write the same mask)."""

from __future__ import annotations

import io
import posixpath
from dataclasses import dataclass, field
from typing import Any

from jobs.common import fs
from jobs.inference import manifest
from jobs.inference.config import SegmentConfig
from jobs.inference.writer import MASKS_DIR, mask_key


def read_input_list(path: str, endpoint_url: str | None) -> list[str]:
    data = fs.read_bytes(fs.absolute(path), endpoint_url=endpoint_url)
    if path.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(data))
        if "path" not in table.column_names:
            raise ValueError(
                f"{path}: a Parquet input list needs a 'path' column, found {table.column_names}"
            )
        return [str(p) for p in table.column("path").to_pylist() if p]
    lines = (line.strip() for line in data.decode("utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def relative_to_base(entry: str, base: str) -> str | None:
    """The entry's path under ``base`` (None when outside it). Accepts relative entries,
    full URIs / absolute paths under base, and scheme-less ``bucket/key`` (Ray's path column)."""
    entry = entry.replace("\\", "/")
    candidates = [base]
    if base.startswith("s3://"):
        candidates.append(base[len("s3://") :])
    if (
        fs.is_remote(entry)
        or entry.startswith("/")
        or any(entry.startswith(c + "/") for c in candidates[1:])
    ):
        for c in candidates:
            if entry.startswith(c.rstrip("/") + "/"):
                return entry[len(c.rstrip("/")) + 1 :]
        return None
    return posixpath.normpath(entry).removeprefix("./")


def list_inputs(cfg: SegmentConfig, endpoint_url: str | None) -> list[tuple[str, str]]:
    """(input URI, relative path) for every input, sorted by relative path."""
    base = fs.absolute(cfg.input)
    if cfg.input_list:
        entries = read_input_list(cfg.input_list, endpoint_url)
        rels, outside = [], []
        for entry in entries:
            rel = relative_to_base(entry, base)
            (outside.append(entry) if rel is None or rel.startswith("../") else rels.append(rel))
        if outside:
            raise ValueError(
                f"{cfg.input_list}: {len(outside)} entries are not under --input {base} "
                f"(e.g. {outside[:3]}); list paths relative to --input, or URIs under it"
            )
        rels = sorted(set(rels))
    else:
        rels = fs.list_images(base, endpoint_url=endpoint_url)
        out = fs.absolute(cfg.output)
        if out.startswith(base.rstrip("/") + "/"):  # outputs inside the input folder
            inner = out[len(base.rstrip("/")) + 1 :] + "/"
            rels = [r for r in rels if not r.startswith(inner)]
    return [(fs.join(base, rel), rel) for rel in rels]


@dataclass
class Plan:
    todo: list[dict[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.todo) + len(self.skipped) + len(self.rejected)


def plan_inputs(
    inputs: list[tuple[str, str]], existing_masks: set[str], *, overwrite: bool
) -> Plan:
    """Split inputs into to-do, skipped (mask exists) and rejected (mask name taken)."""
    out = Plan()
    owner: dict[str, str] = {}
    for uri, rel in inputs:
        key = mask_key(rel)
        if key in owner:
            out.rejected.append(
                manifest.failed_row(
                    uri,
                    rel,
                    f"{uri}: its mask {MASKS_DIR}/{key} is already the mask of {owner[key]} "
                    "(same path, other extension); rename one of the two",
                )
            )
            continue
        owner[key] = rel
        if not overwrite and key in existing_masks:
            out.skipped.append((uri, rel))
        else:
            out.todo.append({"input": uri, "relative_path": rel})
    return out


def existing_mask_keys(output: str, endpoint_url: str | None) -> set[str]:
    """Masks fully written under <output>/masks (temporary files are hidden and not counted)."""
    return {
        rel
        for rel in fs.list_files(fs.join(output, MASKS_DIR), endpoint_url=endpoint_url)
        if rel.endswith(".png") and not any(p.startswith(".") for p in rel.split("/"))
    }
