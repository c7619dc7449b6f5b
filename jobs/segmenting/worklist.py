"""What a segment run has to do, decided in Ray tasks: for every listed input, whether to
segment it, skip it (done by this model with these settings), or not (another model made its
mask; a second input would write the same mask; an --input-list entry outside --input).

    listing blocks (jobs.segmenting.listing)        -> materialised in the object store
    manifest dataset (latest row per input, ok)    -> tasks, a share of the files each
    complete masks under <output>/masks            -> listing tasks (mask keys only)
      => known outputs: the relative paths of the inputs whose mask is complete AND whose
         latest manifest row is ok, with a code for the model + settings that made it (0 = the
         pixels this run would make: same weights, same settings where they touched the image,
         `layout.same_pixels`)
      => duplicates: masks two inputs would both write (a.png, a.jpg), with the winner
      => decide (Ray tasks): one ``decision`` per row; counts come back as numbers

Keys are plain paths matched with ``pyarrow.compute.is_in`` / ``index_in``. 16-byte digests in
sorted NumPy arrays measured no better on benchmarks/segment_scale.py at 100k inputs (driver
0.25 vs 0.27 KB per input, skip-all rerun 24.5 vs 23.1 s; docs/benchmarks.md).

The driver holds object references, a handful of labels and counts: never a row per input. A
mask without a manifest row (a kill between the two) is not "done": it is redone.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs.segmenting import listing, manifest
from jobs.segmenting.layout import Provenance, mask_key, same_pixels

logger = logging.getLogger(__name__)

TODO, DONE, OTHER = "todo", "done", "other"
REJECTED, DUPLICATE, OUTSIDE = "rejected", "duplicate", "outside"
OURS = 0
"""``made_by`` code of the masks this run's model and settings made; -1 = no complete mask."""
EXAMPLES = 10
DECIDED_SCHEMA = listing.INPUT_SCHEMA.append(pa.field("decision", pa.string())).append(
    pa.field("made_by", pa.int32())
)
"""Listing rows with what the work list decided for them."""
KNOWN_SCHEMA = pa.schema([pa.field("relative_path", pa.string()), pa.field("made_by", pa.int32())])
RERUN_COLUMNS = [*manifest.PROVENANCE_COLUMNS, "width", "height"]
"""What the work list reads of the manifest: who made each mask, and the image's size, which
says whether the tile size touched it (`layout.same_pixels`)."""


def known_outputs(
    ours: Provenance, n_manifest: int, *tables: pa.Table
) -> tuple[pa.Table, list[str]]:
    """Ray task: ``tables`` = manifest shares (`manifest.read_latest` of `RERUN_COLUMNS`), then
    mask-key blocks (`listing.output_blocks`). Returns (`KNOWN_SCHEMA` rows: the inputs whose
    mask is complete and recorded ok, with the code of its maker, `OURS` where ``ours`` would
    make the same pixels; the label per code)."""
    rows = manifest.latest(manifest.concat(tables[:n_manifest], RERUN_COLUMNS))
    rows = rows.filter(pc.equal(rows.column("status"), manifest.OK))
    blocks = [t for t in tables[n_manifest:] if t.num_rows]
    masks = pa.concat_tables(blocks).column("mask") if blocks else pa.array([], pa.string())
    keys = pa.array([mask_key(r) for r in rows.column("relative_path").to_pylist()], pa.string())
    rows = rows.filter(pc.is_in(keys, value_set=masks))
    makers = pc.binary_join_element_wise(
        pc.fill_null(rows.column("checkpoint_sha256"), "?"),
        pc.fill_null(rows.column("settings"), "?"),
        "|",
    ).combine_chunks()
    encoded = pc.dictionary_encode(makers)
    of_maker = encoded.indices.to_numpy(zero_copy_only=False)
    heights = pc.fill_null(rows.column("height"), -1).to_numpy()
    widths = pc.fill_null(rows.column("width"), -1).to_numpy()
    codes = np.full(rows.num_rows, OURS, dtype=np.int32)
    labels = ["this model and settings"]
    for j in range(len(encoded.dictionary)):  # a handful of makers, each over its rows at once
        at = np.flatnonzero(of_maker == j)
        first = rows.slice(int(at[0]), 1).to_pylist()[0]
        same = np.zeros(len(at), dtype=bool)
        if first["checkpoint_sha256"] == ours.checkpoint_sha256:
            same = same_pixels(
                first["settings"], ours.settings, heights=heights[at], widths=widths[at]
            )
        if not same.all():
            uri, setting = first["model_uri"], first["settings"]
            labels.append(f"{uri or 'an unnamed model'} ({setting or 'settings not recorded'})")
            codes[at[~same]] = len(labels) - 1
    known = pa.table(
        [rows.column("relative_path"), pa.array(codes, pa.int32())], schema=KNOWN_SCHEMA
    )
    return known, labels


def duplicates(*tables: pa.Table) -> pa.Table:
    """Ray task over the listing blocks: for every mask that two or more inputs would write,
    the winning row (the first relative path; the first listed of equal entries)."""
    columns = ["mask", "relative_path", "row_id"]
    valid = [t.filter(pc.is_null(t.column("error"))).select(columns) for t in tables if t.num_rows]
    empty = pa.schema([listing.INPUT_SCHEMA.field(c) for c in columns]).empty_table()
    if not valid:
        return empty
    counts = (
        pa.concat_tables(t.select(["mask"]) for t in valid)
        .group_by("mask")
        .aggregate([("mask", "count")])
    )
    taken = counts.filter(pc.greater(counts.column("mask_count"), 1)).column("mask")
    if len(taken) == 0:
        return empty
    hits = pa.concat_tables(t.filter(pc.is_in(t.column("mask"), value_set=taken)) for t in valid)
    table = hits.sort_by(
        [("mask", "ascending"), ("relative_path", "ascending"), ("row_id", "ascending")]
    )
    return manifest.first_of_each(table, "mask")


def _value(item: Any) -> Any:
    """An object reference's value (zero-copy for NumPy arrays), or the value itself."""
    import ray

    return ray.get(item) if isinstance(item, ray.ObjectRef) else item


def decide(
    batch: pa.Table, *, known: list, taken: list, overwrite: bool, redo_other: bool
) -> pa.Table:
    """Ray task over a listing block: its rows + ``decision`` and ``made_by`` (the code of
    whoever made the input's complete mask, -1 for none). ``known`` (`known_outputs`) and
    ``taken`` (`duplicates`) hold one item each: an object reference (the tables live in the
    object store) or the value."""
    if batch.num_rows == 0:
        return DECIDED_SCHEMA.empty_table()
    known_rows, winners = _value(known[0]), _value(taken[0])
    n = batch.num_rows
    idx = pc.index_in(batch.column("relative_path"), value_set=known_rows.column("relative_path"))
    made_by = pc.fill_null(pc.take(known_rows.column("made_by"), idx), -1).to_numpy()
    decision = np.full(n, TODO, dtype=object)
    if not overwrite:
        decision[made_by == OURS] = DONE
        decision[made_by > OURS] = TODO if redo_other else OTHER
    errors = batch.column("error").to_pylist()
    if winners.num_rows:
        at = pc.index_in(batch.column("mask"), value_set=winners.column("mask"))
        hit = pc.is_valid(at).to_numpy(zero_copy_only=False)
        at = pc.fill_null(at, 0).to_numpy()
        rels = batch.column("relative_path").to_pylist()
        ids = batch.column("row_id").to_numpy()
        win_rels = winners.column("relative_path").to_pylist()
        win_ids = winners.column("row_id").to_numpy()
        uris = batch.column("input").to_pylist()
        for i in np.flatnonzero(hit):
            j = at[i]
            if ids[i] == win_ids[j]:
                continue
            if rels[i] == win_rels[j]:
                decision[i] = DUPLICATE  # the same entry listed twice: done once
            else:
                decision[i] = REJECTED
                errors[i] = (
                    f"{uris[i]}: its mask masks/{mask_key(rels[i])} is already the mask of "
                    f"{win_rels[j]} (same path, other extension); rename one of the two"
                )
    for i, error in enumerate(errors):
        if error is not None and decision[i] != REJECTED:
            decision[i] = OUTSIDE
    out = batch.set_column(
        batch.schema.get_field_index("error"), "error", pa.array(errors, pa.string())
    )
    out = out.append_column("decision", pa.array(decision.tolist(), pa.string()))
    return out.append_column("made_by", pa.array(made_by, pa.int32()))


def count(*tables: pa.Table) -> dict[str, Any]:
    """Ray task over the decided blocks: counts per decision, per maker of the masks another
    model made, and a few examples (never a row per input)."""
    decisions: Counter[str] = Counter()
    others: Counter[int] = Counter()
    redone: Counter[int] = Counter()
    examples: dict[str, list[str]] = {OUTSIDE: [], REJECTED: [], OTHER: [], TODO: []}
    per_block: list[dict[str, int]] = []
    for t in tables:
        per_block.append({})
        if t.num_rows == 0:
            continue
        d = t.column("decision")
        dec = np.asarray(d.to_pylist(), dtype=object)
        made_by = t.column("made_by").to_numpy()
        per_block[-1] = dict(Counter(dec.tolist()))
        decisions.update(per_block[-1])
        others.update(made_by[dec == OTHER].tolist())
        redone.update(made_by[(dec == TODO) & (made_by > OURS)].tolist())
        for kind, bucket in examples.items():
            if len(bucket) < EXAMPLES:
                column = "error" if kind in (OUTSIDE, REJECTED) else "input"
                picked = t.filter(pc.equal(d, kind)).column(column).slice(0, EXAMPLES)
                bucket += picked.to_pylist()[: EXAMPLES - len(bucket)]
    return {
        "decisions": dict(decisions),
        "other": dict(others),
        "redone": dict(redone),
        "examples": examples,
        "per_block": per_block,
    }


@dataclass
class Worklist:
    """The decided inputs (in the object store) and what the driver needs to know of them."""

    blocks: list = field(default_factory=list)
    """Object references of the decided listing blocks."""
    counts: dict[str, int] = field(default_factory=dict)
    """Inputs per decision."""
    per_block: list[dict[str, int]] = field(default_factory=list)
    """Inputs per decision in each of `blocks`."""
    other: dict[str, int] = field(default_factory=dict)
    """Inputs whose complete mask another model or other settings made, per maker label."""
    redone: dict[str, int] = field(default_factory=dict)
    """Of those, the ones this run redoes (--redo-other-versions, --overwrite), per maker."""
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Inputs of the run (entries listed twice count once)."""
        return sum(n for d, n in self.counts.items() if d != DUPLICATE)

    def n(self, decision: str) -> int:
        return self.counts.get(decision, 0)


def select(batch: pa.Table, *, decision: str, columns: list[str]) -> pa.Table:
    """Ray Data UDF: the rows with this decision, these columns."""
    if "decision" not in batch.column_names:  # an empty block
        return DECIDED_SCHEMA.empty_table().select(columns)
    return batch.filter(pc.equal(batch.column("decision"), decision)).select(columns)


def make_worklist(
    *,
    base: str,
    input_list: str | None,
    output: str,
    endpoint_url: str | None,
    ours: Provenance,
    temp_max_age: float | None,
    overwrite: bool,
    redo_other: bool,
    num_cpus: float,
) -> Worklist:
    """List and decide every input in Ray tasks (see the module docstring); temporaries under
    the output older than ``temp_max_age`` are removed on the way (None: none, a dry run)."""
    import ray

    listed = listing.input_blocks(
        base_uri=base,
        input_list=input_list,
        output_uri=output,
        endpoint_url=endpoint_url,
        num_cpus=num_cpus,
    )
    masks = listing.output_blocks(
        output_uri=output, endpoint_url=endpoint_url, temp_max_age=temp_max_age, num_cpus=num_cpus
    )
    files = manifest.dataset_files(output, endpoint_url=endpoint_url, max_temp_age_s=temp_max_age)
    task = ray.remote(manifest.read_latest).options(num_cpus=num_cpus)
    shares = [
        task.remote(chunk, output=output, endpoint_url=endpoint_url, columns=RERUN_COLUMNS)
        for chunk in manifest.chunks(files)
    ]
    known, labels = (
        ray.remote(known_outputs)
        .options(num_cpus=num_cpus, num_returns=2)
        .remote(ours, len(shares), *shares, *masks)
    )
    taken = ray.remote(duplicates).options(num_cpus=num_cpus).remote(*listed)
    decide_task = ray.remote(decide).options(num_cpus=num_cpus)
    blocks = [
        decide_task.remote(
            block, known=[known], taken=[taken], overwrite=overwrite, redo_other=redo_other
        )
        for block in listed
    ]
    counted = ray.get(ray.remote(count).options(num_cpus=num_cpus).remote(*blocks))
    names = ray.get(labels)
    return Worklist(
        blocks=blocks,
        counts=counted["decisions"],
        per_block=counted["per_block"],
        other={names[c]: n for c, n in counted["other"].items()},
        redone={names[c]: n for c, n in counted["redone"].items()},
        examples=counted["examples"],
    )


def dataset_of(
    work: Worklist,
    decision: str,
    columns: list[str],
    *,
    rows_per_block: int | None = None,
    num_cpus: float = 0.5,
):
    """A lazy Dataset of the work list's rows with this decision (the blocks stay where they are).

    With ``rows_per_block``, Ray tasks cut them into blocks of that many rows at once (`split`),
    outside Ray Data's budget: they run while the pipeline's actors start, and every actor has
    blocks to take as soon as it is up."""
    import ray

    if rows_per_block is None:
        return ray.data.from_arrow_refs(work.blocks).map_batches(
            select,
            fn_kwargs={"decision": decision, "columns": columns},
            batch_format="pyarrow",
            batch_size=None,
        )
    split_task = ray.remote(split)
    refs = []
    for block, counts in zip(work.blocks, work.per_block, strict=True):
        pieces = math.ceil(counts.get(decision, 0) / rows_per_block)
        if pieces:
            out = split_task.options(num_cpus=num_cpus, num_returns=pieces).remote(
                block, decision=decision, columns=columns, rows=rows_per_block
            )
            refs += [out] if pieces == 1 else out
    return ray.data.from_arrow_refs(refs)


def split(table: pa.Table, *, decision: str, columns: list[str], rows: int) -> Any:
    """Ray task: the rows of ``table`` with this decision, these columns, in tables of ``rows``
    rows (one table when there is one, else a tuple: the task's returns)."""
    picked = select(table, decision=decision, columns=columns)
    parts = [picked.slice(i, rows) for i in range(0, picked.num_rows, rows)]
    return parts[0] if len(parts) == 1 else tuple(parts)
