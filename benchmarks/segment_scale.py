"""Segment-job scale benchmark: driver memory and rates at two input counts, and a rerun that
skips everything.

    .venv/bin/python benchmarks/segment_scale.py                       # 10,000 and 100,000
    .venv/bin/python benchmarks/segment_scale.py --small 2000 --large 20000

Inputs are tiny PNGs (16x16 RGB by default: one file, hard-linked) in nested folders of
1,000, so that the job's own per-input work (listing, planning, manifest) dominates, not the
model. Each run is a fresh process (`jobs/segment.py` in-process under a wrapper that reports
the driver's own peak RSS, `ru_maxrss` of RUSAGE_SELF: the driver only, not Ray's processes).

Prints one JSON object: ``driver_peak_rss_mb_small/large``, ``driver_kb_per_input`` (growth
between the sizes divided by the extra inputs), ``images_per_second_small/large``,
``seconds_to_first_mask``, ``rerun_seconds_large`` (a rerun over the large output that skips
every input, process start to exit) and its driver RSS; beside them the baseline
``baseline_list_seconds_large``: one process listing the large input and output trees with a
single-threaded ``pyarrow.fs.FileSelector`` (what "just look at the files" costs).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WRAPPER = r"""
import json, resource, sys, time
sys.path.insert(0, {repo!r})
from jobs import segment
start = time.perf_counter()
code = segment.main(sys.argv[1:])
sys.stderr.write("BENCH " + json.dumps({{
    "code": code,
    "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "main_seconds": time.perf_counter() - start,
}}) + "\n")
"""

FOLDER_SIZE = 1000


def make_inputs(root: Path, n: int, size: int) -> Path:
    """``n`` PNGs under root/images/dNNNN/ (hard links of one file per folder: fast to make,
    real to read)."""
    images = root / "images"
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, "PNG")
    sources = root / "sources"  # one file per folder: a file takes at most 65,000 links
    sources.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        folder = images / f"d{i // FOLDER_SIZE:04d}"
        source = sources / f"{folder.name}.png"
        if i % FOLDER_SIZE == 0:
            folder.mkdir(parents=True, exist_ok=True)
            source.write_bytes(buffer.getvalue())
        os.link(source, folder / f"img_{i:07d}.png")
    return images


def make_model(path: Path) -> Path:
    from tests.integration.inference.helpers import make_checkpoint
    from unet_core.classes import ClassMap

    class_map = ClassMap.from_dict(
        {"classes": [{"name": "background", "value": 0}, {"name": "cell", "value": 255}]}
    )
    return make_checkpoint(path, class_map, base_width=4, depth=2)


def run_job(args: list[str], log: Path) -> dict:
    """One job process; its summary, driver RSS and wall time."""
    start = time.perf_counter()
    with log.open("wb") as sink:
        proc = subprocess.run(
            [sys.executable, "-c", WRAPPER.format(repo=str(REPO)), *args],
            stdout=subprocess.PIPE,
            stderr=sink,
            check=False,
        )
    wall = time.perf_counter() - start
    bench = next(
        json.loads(line[len("BENCH ") :])
        for line in log.read_text(errors="replace").splitlines()
        if line.startswith("BENCH ")
    )
    lines = proc.stdout.decode().strip().splitlines()
    summary = json.loads(lines[-1]) if lines else {}
    if bench["code"] != 0:
        raise SystemExit(f"job failed ({bench['code']}): {summary}; log {log}")
    return {"summary": summary, "rss_mb": bench["rss_mb"], "wall_s": wall}


def list_baseline(*roots: Path) -> float:
    import pyarrow.fs as pafs

    start = time.perf_counter()
    filesystem = pafs.LocalFileSystem()
    for root in roots:
        filesystem.get_file_info(pafs.FileSelector(str(root), recursive=True))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=16, help="image side in pixels")
    parser.add_argument("--num-cpus", type=int, default=4, help="logical CPUs of the job's Ray")
    parser.add_argument("--workdir", default=None, help="keep inputs and outputs here")
    parser.add_argument(
        "--job-flags", default="", help="more flags for every job run, e.g. '--no-fused'"
    )
    opts = parser.parse_args()

    work = Path(opts.workdir or tempfile.mkdtemp(prefix="segment-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    model = make_model(work / "unet.pt")
    # The job's defaults (its forward batch, calls and manifest parts follow the image size;
    # the fused path on CPU), plus what --job-flags adds (e.g. --no-fused).
    job_flags = ["--model", str(model), "--num-cpus", str(opts.num_cpus),
                 "--progress-seconds", "30", *opts.job_flags.split()]  # fmt: skip
    results: dict[str, dict] = {}
    for label, n in (("small", opts.small), ("large", opts.large)):
        root = work / f"n{n}"
        if not (root / "images").exists():
            make_inputs(root, n, opts.size)
        out = root / "out"
        if out.exists():  # a fresh output: the first run segments everything
            shutil.rmtree(out)
        args = ["--input", str(root / "images"), "--output", str(out), *job_flags]
        results[label] = run_job(args, work / f"{label}.log")
        if label == "large":
            results["rerun"] = run_job(args, work / "rerun.log")
            results["baseline_list_s"] = list_baseline(root / "images", out)

    small, large, rerun = results["small"], results["large"], results["rerun"]
    grow_kb = (large["rss_mb"] - small["rss_mb"]) * 1024 / max(1, opts.large - opts.small)
    report = {
        "inputs_small": opts.small,
        "inputs_large": opts.large,
        "image_size": opts.size,
        "driver_peak_rss_mb_small": round(small["rss_mb"], 1),
        "driver_peak_rss_mb_large": round(large["rss_mb"], 1),
        "driver_kb_per_input": round(grow_kb, 4),
        "images_per_second_small": round(small["summary"]["images_per_second"], 1),
        "images_per_second_large": round(large["summary"]["images_per_second"], 1),
        "seconds_small": round(small["wall_s"], 1),
        "seconds_large": round(large["wall_s"], 1),
        "seconds_to_first_mask": large["summary"]["seconds_to_first_mask"],
        "rerun_seconds_large": round(rerun["wall_s"], 1),
        "rerun_job_seconds_large": rerun["summary"]["seconds"],
        "rerun_skipped": rerun["summary"]["skipped"],
        "rerun_driver_peak_rss_mb": round(rerun["rss_mb"], 1),
        "baseline_list_seconds_large": round(results["baseline_list_s"], 2),
        "workdir": str(work),
        "job_flags": job_flags,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
