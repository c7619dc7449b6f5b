"""The segment job's listing, work list, manifest dataset and leases, as plain functions (the
job runs them in Ray tasks; the integration tests run them there)."""

from __future__ import annotations

import datetime as dt
import os
import time

import numpy as np
import pyarrow as pa
import pytest

from jobs.common import fs
from jobs.segmenting import leases, listing, manifest, worklist
from jobs.segmenting.layout import (
    Provenance,
    mask_key,
    output_settings,
    row_settings,
    run_settings,
    same_pixels,
)
from unet_core.predict import needs_tiles

OURS = Provenance("sha-new", "mask_format=indices", "models:/unet/2")
OLD = Provenance("sha-old", "mask_format=indices", "models:/unet/1")


def _touch(root, *rels, data=b"x"):
    for rel in rels:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _listed(base, skip=()):
    found = listing.shards(str(base), endpoint_url=None, skip=skip)
    rows = pa.Table.from_pylist(listing.shard_items(found), schema=listing.SHARD_SCHEMA)
    tables = list(listing.list_input_shards(rows, base_uri=str(base), endpoint_url=None, skip=skip))
    return found, pa.concat_tables(tables)


def test_listing_in_shards_finds_every_image_once(tmp_path):
    src = tmp_path / "in"
    images = ["a.png", "b.JPG", "d1/c.tiff", "d1/e/f.png", "d1/e/g/h.bmp", "d2/i.jpeg"]
    _touch(src, *images, "notes.txt", ".hidden.png", ".cache/x.png", "d1/.tmp/y.png",
           "out/masks/old.png")  # fmt: skip
    found, table = _listed(src, skip=["out"])
    # Root and first-level folders list their own files; second-level folders recurse.
    assert {(os.path.relpath(s.path, src), s.recursive) for s in found} == {
        (".", False), ("d1", False), ("d2", False), ("d1/e", True),
    }  # fmt: skip
    assert sorted(table.column("relative_path").to_pylist()) == sorted(images)
    assert table.column("input").to_pylist()[0].startswith(str(src) + "/")
    assert len(set(table.column("row_id").to_pylist())) == len(images)
    masks = dict(zip(table["relative_path"].to_pylist(), table["mask"].to_pylist(), strict=True))
    assert masks["b.JPG"] == "b.png" and masks["d1/e/g/h.bmp"] == "d1/e/g/h.png"
    with pytest.raises(NotADirectoryError):
        listing.shards(str(src / "a.png"), endpoint_url=None)
    assert listing.shards(str(tmp_path / "missing"), endpoint_url=None) == []


def test_input_list_entries():
    batch = pa.table({"text": ["a/b.png", "# note", "", "/data/c.png", "/other/d.png", "../e.png"]})
    rows = listing.input_list_rows(batch, base_uri="/data", column="text")
    assert rows.column("relative_path").to_pylist()[:2] == ["a/b.png", "c.png"]
    assert rows.column("input").to_pylist()[:2] == ["/data/a/b.png", "/data/c.png"]
    errors = rows.column("error").to_pylist()
    assert errors[:2] == [None, None] and all("not under --input /data" in e for e in errors[2:])
    assert listing.relative_to_base("bkt/in/x/y.jpg", "s3://bkt/in") == "x/y.jpg"


def test_temporary_names_carry_their_job():
    name = fs.temp_name("a.png", "0123456789ab")
    assert fs.is_temp(name) and name.startswith(".a.png.0123456789ab-")
    assert fs.is_temp(".a.png.0123abcd.tmp")  # an older format: judged by age like the rest
    assert not fs.is_temp("a.png")


def _age(path, seconds):
    os.utime(path, (time.time() - seconds, time.time() - seconds))


def test_output_listing_removes_temporaries_by_age_alone(tmp_path):
    out = tmp_path / "out"
    _touch(out, "masks/a.png", "masks/sub/b.png", "overlays/a.jpg", "manifest.parquet")
    young = out / "masks" / fs.temp_name("c.png", "aaaaaaaaaaaa")  # a write in flight
    old = out / "masks/sub" / fs.temp_name("d.png", "aaaaaaaaaaaa")  # whoever wrote it
    legacy = out / "overlays" / ".e.jpg.0123abcd.tmp"  # an older name format
    for path in (young, old, legacy):
        path.write_bytes(b"half")
    _age(old, 7200)
    _age(legacy, 7200)
    found = listing.shards(str(out), endpoint_url=None, skip=["manifest"])
    rows = pa.Table.from_pylist(listing.shard_items(found), schema=listing.SHARD_SCHEMA)

    def listed(temp_max_age):
        tables = listing.list_output_shards(
            rows, output_uri=str(out), endpoint_url=None, temp_max_age=temp_max_age
        )
        return sorted(pa.concat_tables(list(tables)).column("mask").to_pylist())

    # A dry run (None) looks and removes nothing.
    assert listed(None) == ["a.png", "sub/b.png"]
    assert young.exists() and old.exists() and legacy.exists()
    assert listed(3600) == ["a.png", "sub/b.png"]
    assert young.exists() and not old.exists() and not legacy.exists()


def _row(rel, *, maker=OURS, status="ok", at=0, size=(None, None), settings=None):
    return manifest.base_row(
        input=f"/in/{rel}",
        relative_path=rel,
        status=status,
        checkpoint_sha256=maker.checkpoint_sha256,
        settings=settings or maker.settings,
        model_uri=maker.model_uri,
        height=size[0],
        width=size[1],
        finished_at=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=at),
    )


def _decide(listed, rows, masks, ours=OURS, **flags):
    table = manifest.rows_to_table(rows, ["bg", "fg"]).select(worklist.RERUN_COLUMNS)
    mask_table = pa.table(
        [pa.array([mask_key(m) for m in masks], pa.string())], schema=listing.OUTPUT_SCHEMA
    )
    known, labels = worklist.known_outputs(ours, 1, table, mask_table)
    taken = worklist.duplicates(listed)
    decided = worklist.decide(listed, known=[known], taken=[taken],
                          overwrite=flags.get("overwrite", False),
                          redo_other=flags.get("redo_other", False))  # fmt: skip
    return decided, labels


def test_worklist_decides_by_provenance_and_mask():
    rels = ["done.png", "old.png", "failed.png", "nomask.png", "norow.png", "new.png",
            "clash.jpg", "clash.png", "relisted.png", "relisted.png"]  # fmt: skip
    listed = listing.input_rows([f"/in/{r}" for r in rels], rels)
    rows = [
        _row("done.png", maker=OLD, at=0), _row("done.png", at=5),  # redone by us later
        _row("old.png", maker=OURS, at=0), _row("old.png", maker=OLD, at=5),
        _row("failed.png", status="failed"), _row("nomask.png"),
    ]  # fmt: skip
    masks = ["done.png", "old.png", "failed.png", "norow.png"]  # nomask's mask was deleted
    decided, labels = _decide(listed, rows, masks)
    pairs = zip(decided["relative_path"].to_pylist(), decided["decision"].to_pylist(), strict=True)
    got = {rel: d for rel, d in pairs if d != worklist.DUPLICATE}
    assert got == {
        "done.png": worklist.DONE, "old.png": worklist.OTHER, "failed.png": worklist.TODO,
        "nomask.png": worklist.TODO, "norow.png": worklist.TODO,  # a mask without a row is redone
        "new.png": worklist.TODO, "clash.jpg": worklist.TODO, "clash.png": worklist.REJECTED,
        "relisted.png": worklist.TODO,
    }  # fmt: skip
    assert decided["decision"].to_pylist().count(worklist.DUPLICATE) == 1
    rejected = decided.filter(pa.compute.equal(decided["decision"], worklist.REJECTED))
    assert "already the mask of clash.jpg" in rejected["error"][0].as_py()
    counted = worklist.count(decided)
    assert counted["decisions"] == {worklist.DONE: 1, worklist.OTHER: 1, worklist.TODO: 6,
                                    worklist.REJECTED: 1, worklist.DUPLICATE: 1}  # fmt: skip
    assert {labels[c]: n for c, n in counted["other"].items()} == {
        "models:/unet/1 (mask_format=indices)": 1
    }
    work = worklist.Worklist(counts=counted["decisions"])
    assert work.total == 9  # the entry listed twice counts once

    redo, _ = _decide(listed, rows, masks, redo_other=True)
    assert (
        dict(zip(redo["relative_path"].to_pylist(), redo["decision"].to_pylist(), strict=True))[
            "old.png"
        ]
        == worklist.TODO
    )
    assert worklist.count(redo)["redone"] == {1: 1}
    everything, _ = _decide(listed, rows, masks, overwrite=True)
    assert worklist.DONE not in everything["decision"].to_pylist()


def test_outside_entries_are_marked():
    rows = listing.input_list_rows(
        pa.table({"text": ["a.png", "/x/b.png"]}), base_uri="/in", column="text"
    )
    decided, _ = _decide(rows, [], [])
    assert decided["decision"].to_pylist() == [worklist.TODO, worklist.OUTSIDE]
    assert worklist.count(decided)["examples"][worklist.OUTSIDE] == [
        "/x/b.png: not under --input /in"
    ]


def test_manifest_dataset_latest_rows_across_models(tmp_path):
    out = str(tmp_path)
    first = manifest.rows_to_table([_row("a.png", at=0), _row("b.png", at=0)], ["bg", "fg"])
    second = manifest.rows_to_table([_row("a.png", maker=OLD, at=9)], ["bg", "road"])
    manifest.write_part(out, first, job_id="job1")
    manifest.write_part(out, second, job_id="job2")
    young = tmp_path / "manifest" / fs.temp_name("part-x.parquet", "livejob")
    old = tmp_path / "manifest" / fs.temp_name("part-y.parquet", "livejob")
    for path in (young, old):
        path.write_bytes(b"half")
    _age(old, 7200)
    (tmp_path / "manifest" / "part-broken.parquet").write_bytes(b"not parquet")
    assert len(manifest.dataset_files(out)) == 3 and old.exists()  # readers skip, keep
    files = manifest.dataset_files(out, max_temp_age_s=3600)
    assert len(files) == 3 and young.exists() and not old.exists()
    table = manifest.latest_rows(out)
    rows = {r["relative_path"]: r for r in table.to_pylist()}
    assert set(rows) == {"a.png", "b.png"} and rows["a.png"]["model_uri"] == "models:/unet/1"
    fractions = table.schema.field("class_fractions").type
    assert {fractions.field(i).name for i in range(fractions.num_fields)} == {"bg", "fg", "road"}


def test_leases_share_same_model_and_refuse_another(tmp_path):
    out = str(tmp_path)
    with leases.hold(out, job_id="first0000000", provenance=OURS.key, model_uri="m2",
                     settings="s") as others:  # fmt: skip
        assert others == []
        with leases.hold(out, job_id="second000000", provenance=OURS.key, model_uri="m2",
                         settings="s") as others:  # fmt: skip
            assert [lease.job_id for lease in others] == ["first0000000"]
        with pytest.raises(leases.OutputBusyError, match="job first0000000 .*model m2"), \
                leases.hold(out, job_id="third0000000", provenance=OLD.key, model_uri="m1",
                            settings="s"):  # fmt: skip
            pass
        assert [lease.job_id for lease in leases.live_leases(out)] == ["first0000000"]
    assert leases.live_leases(out) == []  # released at exit


def test_a_lease_of_a_dead_process_is_not_live(tmp_path):
    lease = leases.Lease("j", "p", "m", "s", leases.socket.gethostname(), 2**22 + 12345,
                         time.time(), time.time())  # fmt: skip
    assert not lease.alive(time.time())
    alive = leases.Lease("j", "p", "m", "s", leases.socket.gethostname(), os.getpid(),
                         time.time(), time.time())  # fmt: skip
    assert alive.alive(time.time()) and not alive.alive(time.time() + leases.LEASE_TTL_S + 1)


def _settings(tile, overlap=64, **kw):
    return output_settings(mask_format="indices", tta=kw.get("tta", "none"), tile_size=tile,
                           tile_overlap=overlap)  # fmt: skip


CPU, GPU = _settings(512), _settings(1024)


def test_rows_record_the_tiling_the_image_got():
    assert (
        row_settings(CPU, tiled=True) == CPU == "mask_format=indices tta=0 tile_size=512 overlap=64"
    )
    assert row_settings(CPU, tiled=False) == f"{CPU} tiled=0"
    assert run_settings(row_settings(CPU, tiled=False)) == CPU == run_settings(CPU)
    assert row_settings(CPU, tiled=None) == CPU  # not predicted: the run's settings
    assert row_settings(None, tiled=False) is None
    with_exif = output_settings(mask_format="color", tta="dihedral", tile_size=512,
                                tile_overlap=64, exif_transpose=False)  # fmt: skip
    assert (
        row_settings(with_exif, tiled=False)
        == "mask_format=color tta=dihedral tile_size=512 overlap=64 exif_transpose=0 tiled=0"
    )


@pytest.mark.parametrize(
    ("recorded", "size", "ours", "same"),
    [
        (row_settings(CPU, tiled=False), (300, 400), GPU, True),  # whole under both
        (CPU, (300, 400), GPU, True),  # an older row: its size says it was not tiled
        (CPU, (600, 600), GPU, False),  # tiled at 512, whole at 1024
        (CPU, (600, 600), CPU, True),
        (CPU, (512, 512), GPU, True),  # no larger than the tile: whole
        (CPU, (2000, 600), GPU, False),  # tiled under both, other tiles
        (GPU, (2000, 600), _settings(1024, 32), False),  # other overlap, tiled
        (row_settings(CPU, tiled=False), (300, 400), _settings(1024, 32), True),
        (row_settings(GPU, tiled=False), (600, 600), CPU, False),  # whole before, tiled now
        (row_settings(CPU, tiled=False), (600, 600), _settings(0, 0), True),  # never tiles
        (row_settings(CPU, tiled=False), (300, 400), _settings(1024, tta="flip"), False),
        (CPU, (-1, -1), CPU, True),  # no size recorded: the strings decide
        (CPU, (-1, -1), GPU, False),
        ("mask_format=indices tta=0 tile_size=big overlap=64", (30, 40), GPU, False),
    ],
)
def test_only_settings_that_touched_the_pixels_count(recorded, size, ours, same):
    got = same_pixels(recorded, ours, heights=np.array([size[0]]), widths=np.array([size[1]]))
    assert got.tolist() == [same]


def test_the_rule_is_the_predictors():
    sizes = [(h, w) for h in (1, 511, 512, 513, 1024, 1025) for w in (1, 512, 513, 1025)]
    heights, widths = np.array(sizes).T
    for tile in (0, 512, 1024):
        whole = same_pixels(_settings(tile), _settings(0), heights=heights, widths=widths)
        assert whole.tolist() == [not needs_tiles(h, w, tile) for h, w in sizes], tile


def test_a_gpu_rerun_skips_what_cpu_tiles_did_not_touch():
    cpu_run = Provenance("sha-new", CPU, "models:/unet/2")
    gpu_run = Provenance("sha-new", GPU, "models:/unet/2")
    rels = ["small.png", "old_small.png", "large.png", "old_large.png", "other.png"]
    listed = listing.input_rows([f"/in/{r}" for r in rels], rels)
    rows = [
        _row("small.png", maker=cpu_run, size=(300, 200), settings=row_settings(CPU, tiled=False)),
        _row("old_small.png", maker=cpu_run, size=(300, 200)),  # written before rows said
        _row("large.png", maker=cpu_run, size=(600, 600)),
        _row("old_large.png", maker=cpu_run, size=(700, 500)),
        _row("other.png", maker=OLD, size=(300, 200), settings=row_settings(CPU, tiled=False)),
    ]
    decided, labels = _decide(listed, rows, rels, ours=gpu_run)
    got = dict(
        zip(decided["relative_path"].to_pylist(), decided["decision"].to_pylist(), strict=True)
    )
    assert got == {"small.png": worklist.DONE, "old_small.png": worklist.DONE,
                   "large.png": worklist.OTHER, "old_large.png": worklist.OTHER,
                   "other.png": worklist.OTHER}  # fmt: skip
    other = {labels[c]: n for c, n in worklist.count(decided)["other"].items()}
    assert other == {
        f"models:/unet/2 ({CPU})": 2,
        f"models:/unet/1 ({CPU} tiled=0)": 1,
    }
    again, _ = _decide(listed, rows, rels, ours=cpu_run)  # the CPU run's own rerun: all done
    assert set(again["decision"].to_pylist()) == {worklist.DONE, worklist.OTHER}
    assert again["decision"].to_pylist().count(worklist.OTHER) == 1  # other.png: another model
