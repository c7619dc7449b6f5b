"""jobs/segment.py --report and jobs/report.py (unet-report): the QC page opened in a real
headless Chromium (Debian's package, driven by Playwright; no browser is downloaded). The page
must render without console errors, load every image, show the manifest's counts and escape
hostile file names; the report made alone from an output's manifest shows what segment's own
report shows."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs import report, segment
from jobs.segmenting.manifest import read_manifest
from tests.conftest import upload_tree
from tests.integration.inference.helpers import BAD, make_checkpoint, run_main
from tests.support import missing
from unet_core.classes import ClassMap
from unet_core.viz import colorize_mask

pytestmark = pytest.mark.integration

HOSTILE_OK = "<img src=x onerror=alert(1)> & 'q'.png"
"""A good image whose name is markup: it must show as text, never as an element."""
HOSTILE_BAD = '<b onclick="x">bold.png'
"""Not an image; its name and error land in the failures table."""
FACTS = """() => ({
  title: document.title,
  images: [...document.images].map(i => ({src: i.getAttribute('src'), complete: i.complete,
                                         width: i.naturalWidth})),
  status: Object.fromEntries([...document.querySelectorAll('[data-status]')]
                             .map(e => [e.dataset.status, e.textContent])),
  total: document.getElementById('count-total').textContent,
  failures: [...document.querySelectorAll('#failures tbody tr')]
            .map(tr => [...tr.cells].map(c => c.textContent)),
  worst: [...document.querySelectorAll('#worst .shot .path')].map(e => e.textContent),
  run: Object.fromEntries([...document.querySelectorAll('#run tr')]
                          .map(tr => [tr.cells[0].textContent, tr.cells[1].textContent])),
  scripts: document.scripts.length,
  injected: document.querySelectorAll('img[onerror], b[onclick]').length,
  external: [...document.querySelectorAll('[src], [href]')]
            .map(e => e.getAttribute('src') || e.getAttribute('href'))
            .filter(u => /^[a-z][a-z0-9+.-]*:/i.test(u)),
  text: document.body.innerText,
})"""


def _chromium() -> str:
    """Debian's Chromium and Playwright, or skip (fail with CI=true)."""
    exe = shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
    )
    if exe is None:
        missing("chromium is not installed (Debian: apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing("playwright is not installed (pip install -e '.[dev]')")
    return exe


def open_page(page: Path, chromium: str) -> dict:
    """Load the page in headless Chromium; what it shows, and every console error, page error
    and failed request."""
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium)
        try:
            tab = browser.new_page()
            tab.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
            tab.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            tab.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            tab.goto(page.as_uri(), wait_until="load")
            facts = tab.evaluate(FACTS)
        finally:
            browser.close()
    facts["problems"] = problems
    return facts


def _number(text: str) -> int:
    return int(text.replace(",", ""))


def check_page(page: Path, chromium: str, manifest: list[dict], *, thumbs: int) -> dict:
    """The page renders, loads all its images, shows the manifest's counts; its facts."""
    facts = open_page(page, chromium)
    assert facts["problems"] == [], facts["problems"]
    assert facts["title"].startswith("Segmentation QC report"), facts["title"]
    assert facts["scripts"] == 0 and facts["external"] == [], facts  # static, offline
    assert facts["injected"] == 0
    images = facts["images"]
    assert len(images) == 2 + 3 * thumbs, [i["src"] for i in images]  # 2 charts + thumbnails
    broken = [i for i in images if not (i["complete"] and i["width"] > 0)]
    assert not broken, broken
    want: dict[str, int] = {}
    for row in manifest:
        want[row["status"]] = want.get(row["status"], 0) + 1
    assert {k: _number(v) for k, v in facts["status"].items()} == want
    assert _number(facts["total"]) == len(manifest)
    ok = sorted(
        (r for r in manifest if r["status"] == "ok"),
        key=lambda r: (r["mean_confidence"], r["relative_path"]),
    )
    assert facts["worst"] == [r["relative_path"] for r in ok[:thumbs]]
    return facts


def check_report_alone(out: str, page: Path, chromium: str, rows: list[dict], segments: dict,
                       capsys, *, argv: list[str] = (), fetch=None) -> dict:  # fmt: skip
    """jobs/report.py over an output segment wrote (its report is ``segments``, the facts of
    its page): the same counts, failures, thumbnails and charts, the last job's model and rows;
    what the manifest cannot tell is said. ``fetch`` brings an S3 page home first."""
    code, alone = run_main(report.main, ["--output", out, *argv], capsys)
    assert code == 0 and alone["report"] == f"{out}/report.html", alone
    assert alone["rows"] == len(rows) and alone["manifest"].startswith(f"{out}/manifest."), alone
    if fetch:
        fetch()
    facts = check_page(page, chromium, rows, thumbs=len(segments["worst"]))
    for key in ("status", "total", "failures", "worst"):
        assert facts[key] == segments[key], key
    # Same bytes, same names: the charts and thumbnails are the ones segment drew.
    assert sorted(i["src"] for i in facts["images"]) == sorted(i["src"] for i in segments["images"])
    for key in ("processed in this run", "model URI", "model version", "settings"):
        assert facts["run"][key] == segments["run"][key], key
    assert facts["run"]["skipped (already done)"] == "not known"
    assert "Made from the manifest alone" in facts["text"]
    return alone


def _inputs(root: Path, synthetic_root: Path, hostile: Path) -> list[Path]:
    images = sorted((synthetic_root / "images").glob("*.png"))
    for p in images[:8]:
        shutil.copy(p, root / p.name)
    for name in (*BAD, "rgba.png", "gray16.png", "palette.png", "one_pixel.png"):
        shutil.copy(hostile / name, root / name)
    shutil.copy(images[8], root / HOSTILE_OK)
    (root / HOSTILE_BAD).write_bytes(b"<html>not an image</html>")
    return images


def test_report_renders_the_whole_manifest(tmp_path, ray_local, synthetic_root, hostile, capsys):
    chromium = _chromium()
    class_map = ClassMap.from_file(synthetic_root / "classes.json")
    ckpt = make_checkpoint(tmp_path / "unet.pt", class_map)
    source = tmp_path / "in"
    source.mkdir()
    images = _inputs(source, synthetic_root, hostile)
    out = tmp_path / "out"
    args = ["--input", source, "--output", out, "--model", ckpt, "--batch-size", 4,
            "--mask-format", "values", "--report-worst", 5]  # fmt: skip
    code, summary = run_main(segment.main, args, capsys)
    assert code == 1 and summary["failed"] == len(BAD) + 1, summary
    page = out / "report.html"
    assert summary["report"] == str(page)
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    facts = check_page(page, chromium, rows, thumbs=5)

    failed = {r["relative_path"]: r["error"] for r in rows if r["status"] == "failed"}
    assert {f[0]: f[1] for f in facts["failures"]} == failed  # names and errors as text
    assert HOSTILE_BAD in failed and HOSTILE_BAD in facts["text"]
    assert facts["run"]["processed in this run"] == str(len(rows))
    assert facts["run"]["model URI"] == str(ckpt)

    # The mask thumbnail is the written mask (values decoded back to classes) in class colours.
    first = next(r for r in rows if r["relative_path"] == facts["worst"][0])
    shown = next(i["src"] for i in facts["images"] if i["src"].startswith("report/mask-"))
    written = np.asarray(Image.open(first["output"]))
    want = colorize_mask(class_map.decode(written), class_map.colors)
    np.testing.assert_array_equal(np.asarray(Image.open(out / shown).convert("RGB")), want)
    assert not list(out.rglob("*.tmp"))

    # A rerun that adds one image rewrites the report for every input of the output.
    shutil.copy(images[9], source / images[9].name)
    code, again = run_main(segment.main, args, capsys)
    assert (again["ok"], again["skipped"]) == (1, len(rows) - len(failed)), again
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert len(rows) == summary["total"] + 1
    facts = check_page(page, chromium, rows, thumbs=5)
    assert facts["run"]["processed in this run"] == str(1 + len(failed))

    # unet-report over the same output: the same page, made from the manifest alone.
    check_report_alone(str(out), page, chromium, rows, facts, capsys, argv=["--report-worst", 5])
    # A missing output, an output without a manifest: exit 2 naming the path and the fix.
    for missing_out, says in ((tmp_path / "nowhere", "no such folder"), (source, "no manifest")):
        code, error = run_main(report.main, ["--output", missing_out], capsys)
        assert code == 2 and str(missing_out) in error["error"] and says in error["error"], error
        assert "--output of" in error["error"]

    # --no-report writes none.
    few = tmp_path / "few"
    few.mkdir()
    shutil.copy(images[0], few / images[0].name)
    bare = tmp_path / "bare"
    code, plain = run_main(
        segment.main, ["--input", few, "--output", bare, "--model", ckpt, "--no-report"], capsys
    )
    assert code == 0 and plain["ok"] == 1 and plain["report"] is None, plain
    assert not (bare / "report.html").exists() and not (bare / "report").exists()


def test_report_on_s3_only_when_asked(
    tmp_path, ray_local, s3_endpoint, s3_bucket, synthetic_root, capsys
):
    import boto3

    chromium = _chromium()
    class_map = ClassMap.from_file(synthetic_root / "classes.json")
    ckpt = make_checkpoint(tmp_path / "unet.pt", class_map)
    source = upload_tree(synthetic_root / "images", s3_bucket, "raw", s3_endpoint)
    out = f"s3://{s3_bucket}/masks"
    args = ["--input", source, "--output", out, "--model", ckpt, "--mask-format", "color",
            "--manifest-format", "jsonl"]  # fmt: skip
    code, summary = run_main(segment.main, args, capsys)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket, Prefix="masks/")["Contents"]]
    assert code == 0 and summary["report"] is None, summary  # off by default on S3
    assert not [k for k in keys if k.startswith(("masks/report", "masks/report.html"))]

    # --report on a rerun: nothing to segment, the page covers every input of the output.
    code, again = run_main(segment.main, [*args, "--report"], capsys)
    assert code == 0 and again["skipped"] == summary["total"], again
    assert again["report"] == f"{out}/report.html"
    head = client.head_object(Bucket=s3_bucket, Key="masks/report.html")
    assert head["ContentType"].startswith("text/html")
    local = tmp_path / "downloaded"
    for obj in client.list_objects_v2(Bucket=s3_bucket, Prefix="masks/report")["Contents"]:
        dest = local / obj["Key"].removeprefix("masks/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(s3_bucket, obj["Key"], str(dest))
    rows = read_manifest(f"{out}/manifest.jsonl")  # the report read it streamed from S3
    facts = check_page(local / "report.html", chromium, rows, thumbs=12)
    assert facts["run"]["processed in this run"] == "0"
    assert facts["run"]["skipped (already done)"] == str(len(rows))

    # unet-report over the S3 output (the endpoint as a flag): segment's page from the manifest
    # alone. The last job that wrote rows is the first run (the rerun skipped everything).
    def fetch():
        for obj in client.list_objects_v2(Bucket=s3_bucket, Prefix="masks/report")["Contents"]:
            client.download_file(
                s3_bucket, obj["Key"], str(local / obj["Key"].removeprefix("masks/"))
            )

    first_run = {**facts, "run": {**facts["run"], "processed in this run": str(len(rows))}}
    check_report_alone(out, local / "report.html", chromium, rows, first_run, capsys,
                       argv=["--s3-endpoint-url", s3_endpoint], fetch=fetch)  # fmt: skip
    assert client.head_object(Bucket=s3_bucket, Key="masks/report.html")["ContentType"].startswith(
        "text/html"
    )
