"""Listing an S3 prefix the way the segment job does, against a local moto server.

    .venv/bin/python benchmarks/s3_listing.py --keys 20000 --folders 20

Uploads ``--keys`` tiny objects under ``--folders`` prefixes, then lists them with the job's
listing (`jobs.segmenting.listing.input_blocks`: a shard per folder, Ray tasks, paged
``ListObjectsV2``) and, as the baseline in the same run, with one recursive
``pyarrow.fs.FileSelector`` in this process. moto runs in a process of its own. Prints one JSON object: seconds of each, keys
found, and the driver's RSS before and after the job's listing, cold (Ray's workers start) and
warm (the steady state: what each further listing costs the driver).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=20_000)
    parser.add_argument("--folders", type=int, default=20)
    opts = parser.parse_args()

    import boto3
    import pyarrow.fs as pafs
    import ray

    from tests.servers import free_port

    # moto in a process of its own: in this one, its answers would count as driver memory.
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while not _up(endpoint):
        if time.monotonic() > deadline or server.poll() is not None:
            raise SystemExit(f"moto server did not start on {endpoint}")
        time.sleep(0.2)
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_REGION="us-east-1", AWS_ENDPOINT_URL=endpoint)  # fmt: skip
    try:
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=bucket)
        start = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(
                lambda i: client.put_object(Bucket=bucket, Key=f"in/f{i % opts.folders:03d}/img_{i:07d}.png", Body=b"x"),
                range(opts.keys),
            ))  # fmt: skip
        upload_s = time.perf_counter() - start

        from jobs.common import fs
        from jobs.segmenting import listing

        filesystem, _ = fs.resolve(f"s3://{bucket}/in", endpoint_url=endpoint)
        start = time.perf_counter()
        baseline = filesystem.get_file_info(pafs.FileSelector(f"{bucket}/in", recursive=True))
        baseline_s = time.perf_counter() - start

        ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR")
        runs = []
        for _ in range(2):  # the first run also pays for warming up Ray's workers
            before = rss_mb()
            start = time.perf_counter()
            blocks = listing.input_blocks(base_uri=f"s3://{bucket}/in", input_list=None,
                                          output_uri=f"s3://{bucket}/out", endpoint_url=endpoint,
                                          num_cpus=0.5)  # fmt: skip
            count = ray.remote(lambda t: t.num_rows)
            found = sum(ray.get([count.remote(b) for b in blocks]))
            runs.append({"seconds": round(time.perf_counter() - start, 2), "found": found,
                         "blocks": len(blocks), "driver_rss_mb_before": round(before, 1),
                         "driver_rss_mb_after": round(rss_mb(), 1)})  # fmt: skip
            del blocks
        ray.shutdown()
        print(json.dumps({
            "keys": opts.keys, "folders": opts.folders, "upload_seconds": round(upload_s, 1),
            "job_listing_cold": runs[0], "job_listing_warm": runs[1],
            "baseline_single_selector_seconds": round(baseline_s, 2),
            "baseline_found": sum(1 for i in baseline if i.type == pafs.FileType.File),
        }))  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=30)


def _up(endpoint: str) -> bool:
    import urllib.request

    try:
        urllib.request.urlopen(endpoint, timeout=2)
        return True
    except OSError:
        return False


if __name__ == "__main__":
    main()
