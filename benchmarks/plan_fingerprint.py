"""The fingerprint of a generated set (`unet-plan`): seconds and the driver's memory.

    .venv/bin/python benchmarks/plan_fingerprint.py --images 1000

Generates ``--images`` pairs of 512x512 RGB images and 3-class masks (shapes on a gradient, a
few sequences of numbered frames) in a temporary folder, starts a local Ray (timed apart) and
warms it with the fingerprint of 8 other pairs, then fingerprints the set with the job
(`jobs.planning.job.run_plan`: listing, Ray Data tasks, every pair sampled when ``--sample`` >=
``--images``) twice, polling the driver's RSS meanwhile; and, as the baseline in the same run,
with a plain single-process loop over the same files (`jobs.planning.scan.tally_pairs` on every
pair, then the same summary). Prints one JSON object: seconds of each, the driver's RSS before,
at its peak and after each job run, and the second run's peak growth per image (the first run
also pays one-time allocations of Ray Data's driver side).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

SIZE = 512


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return 0.0


class PeakRss:
    """The largest RSS of this process seen while the block runs (polled every 50 ms)."""

    def __enter__(self) -> PeakRss:
        self.peak, self._stop = rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def generate(root: Path, count: int, seed: int = 0) -> None:
    """``count`` pairs: sequences of 50 numbered frames, a class map of 3 classes."""
    from unet_core.classes import ClassInfo, ClassMap

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    ClassMap((ClassInfo("background", 0), ClassInfo("cell", 1), ClassInfo("edge", 2))).save(
        root / "classes.json"
    )
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    for i in range(count):
        mask = np.zeros((SIZE, SIZE), np.uint8)
        for _ in range(int(rng.integers(3, 12))):
            cy, cx, r = rng.integers(0, SIZE), rng.integers(0, SIZE), rng.integers(8, 60)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            mask[disc] = 1
            mask[disc & ((yy - cy) ** 2 + (xx - cx) ** 2 >= (r - 2) ** 2)] = 2
        base = (xx * 0.2 + yy * 0.1 + rng.integers(0, 60)).astype(np.float32)
        image = np.stack([base + 80 * (mask == c) for c in range(3)], axis=-1)
        name = f"seq{i // 50:03d}_{i % 50:04d}.png"
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
            root / "images" / name, compress_level=1
        )
        Image.fromarray(mask).save(root / "masks" / name, compress_level=1)


def baseline(root: Path, seed: int) -> float:
    """Seconds of a plain loop in this process over every pair (all read in full)."""
    from jobs.planning.fingerprint import build_fingerprint, intensity_stats
    from jobs.planning.names import summarise_groups
    from jobs.planning.scan import list_pairs, read_class_map, tally_pairs

    started = time.perf_counter()
    class_map = read_class_map(str(root), None, endpoint_url=None)
    pairs = list_pairs(str(root), endpoint_url=None)
    rows = [
        {"key": p.key, "image": str(root / p.image), "mask": str(root / p.mask), "sampled": True}
        for p in pairs
    ]
    tally = tally_pairs(rows, class_map=class_map, seed=seed)
    build_fingerprint(
        tally,
        root=str(root),
        seed=seed,
        class_names=class_map.names,
        name_groups=summarise_groups([p.key for p in pairs]),
        intensity=intensity_stats(tally, seed),
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--sample", type=int, default=2000, help="the job's --sample")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    from jobs.common.logs import setup_logging
    from jobs.planning.config import PlanConfig
    from jobs.planning.job import run_plan

    setup_logging("WARNING")
    from jobs.common.ray_cluster import connect_ray

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "set"
        started = time.perf_counter()
        generate(root, args.images)
        generate(Path(scratch) / "warm-up", 8, seed=1)
        generated = time.perf_counter() - started
        started = time.perf_counter()
        connect_ray(dashboard=False)  # the job's own start, timed apart
        ray_start = time.perf_counter() - started
        # Ray Data's driver-side modules and state load on a first run: not the set's cost
        run_plan(PlanConfig(data=str(Path(scratch) / "warm-up"), log_level="WARNING"))
        cfg = PlanConfig(data=str(root), sample=args.sample, seed=args.seed, log_level="WARNING")
        runs = []
        for _ in range(2):  # the second run: what remains once one-time allocations are made
            before = rss_mb()
            with PeakRss() as peak:
                started = time.perf_counter()
                summary = run_plan(cfg)
                seconds = time.perf_counter() - started
            runs.append(
                {
                    "seconds": round(seconds, 1),
                    "rss_before_mb": round(before, 1),
                    "rss_peak_mb": round(peak.peak, 1),
                    "rss_after_mb": round(rss_mb(), 1),
                }
            )
        loop_seconds = baseline(root, args.seed)
    fp = summary["fingerprint"]
    print(
        json.dumps(
            {
                "images": args.images,
                "size": SIZE,
                "sampled": fp["sampled"],
                "cpus": os.cpu_count(),
                "generate_seconds": round(generated, 1),
                "ray_start_seconds": round(ray_start, 1),
                "job_seconds": runs[0]["seconds"],
                "job_seconds_per_image": round(runs[0]["seconds"] / args.images, 4),
                "baseline_loop_seconds": round(loop_seconds, 1),
                "driver_runs": runs,
                "driver_rss_growth_kb_per_image": round(
                    (runs[1]["rss_peak_mb"] - runs[1]["rss_before_mb"]) * 1024 / args.images, 1
                ),
                "name_groups": fp["name_groups"]["groups"],
                "command": f"benchmarks/plan_fingerprint.py --images {args.images}",
            }
        )
    )


if __name__ == "__main__":
    main()
