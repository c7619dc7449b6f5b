"""Throughput and memory of the batch segmentation job against two baselines.

    .venv/bin/python benchmarks/segment_throughput.py --images 200

(a) model only: decoded, normalised tensors already in memory; forward + class selection
    (unet_core.predict.predict_tensor: bf16 autocast where native, channels-last, inference mode)
    in the job's actor layout: --actors model copies in as many processes, --torch-threads each
(b) the job end to end: `python jobs/segment.py` as a subprocess on its own local Ray: list,
    read, decode, predict, encode, write, manifest; its automatic path (fused on CPU), and
    beside it the staged path (--no-fused). Rate = the job's own images_per_second
    (from building the pipeline to its last batch: actor start-up and model load included,
    Ray start-up excluded; the wall time with Ray start-up is reported too).
(c) the naive loop a user writes from the seed repos: PIL open, fp32 tensor, model, argmax,
    PIL save, one image at a time, under torch.no_grad.

Same model (random weights: speed does not depend on them), same machine, same
processes and threads for (a) and (b).
Images are CamVid val (480x360 RGB PNG) repeated by symlink to --images N. Peak memory is the
summed RSS of the job's process tree (driver, raylet, GCS, Ray workers) sampled every 0.5 s
(PSS every 5 s: reading it costs the job CPU),
at N and at 10N images; the time to the first mask is from starting the job's process (Python
and Ray start-up included) to the first mask file. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jobs.common.resources import forward_batch  # noqa: E402
from unet_core.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from unet_core.classes import ClassMap  # noqa: E402
from unet_core.config import ModelConfig, PreprocessConfig  # noqa: E402
from unet_core.data import decode_image  # noqa: E402
from unet_core.model import UNet  # noqa: E402
from unet_core.predict import cpu_supports_bf16, predict_tensor, prepare_for_inference  # noqa: E402

CAMVID = REPO.parent / "shared" / "data" / "camvid" / "val" / "images"
CAMVID_CLASSES = [
    "sky",
    "building",
    "pole",
    "road",
    "pavement",
    "tree",
    "sign_symbol",
    "fence",
    "car",
    "pedestrian",
    "bicyclist",
]


def make_model(path: Path, *, base_width: int, depth: int) -> Path:
    torch.manual_seed(0)
    config = ModelConfig(
        in_channels=3, num_classes=len(CAMVID_CLASSES), base_width=base_width, depth=depth
    )
    class_map = ClassMap.from_names(CAMVID_CLASSES, ignore_values=[11])
    save_checkpoint(
        path,
        UNet.from_config(config),
        model_config=config,
        class_map=class_map,
        preprocess=PreprocessConfig(),
    )
    return path


def make_inputs(folder: Path, sources: list[Path], n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        link = folder / f"img_{i:05d}.png"
        if not link.exists():
            link.symlink_to(sources[i % len(sources)])
        paths.append(link)
    return paths


# --- (a) model only ------------------------------------------------------------------------------
def _model_only_worker(ckpt, sources, n, batch_size, threads, barrier, queue) -> None:
    torch.set_num_threads(threads)
    loaded = load_checkpoint(ckpt)
    model = prepare_for_inference(loaded.model, "cpu")
    tensors = torch.stack(
        [
            torch.from_numpy(loaded.preprocess.normalize(decode_image(p.read_bytes(), channels=3)))
            for p in sources
        ]
    )
    predict_tensor(model, tensors[:batch_size])  # warm-up (oneDNN primitive creation)
    barrier.wait()
    start, done = time.perf_counter(), 0
    while done < n:
        idx = [(done + i) % len(sources) for i in range(min(batch_size, n - done))]
        classes, _ = predict_tensor(model, tensors[idx])
        classes.cpu().numpy()
        done += len(idx)
    queue.put(time.perf_counter() - start)


def model_only(
    ckpt: Path, sources: list[Path], n: int, batch_size: int, *, processes: int, threads: int
) -> float:
    """Images/s of ``processes`` model copies with ``threads`` each, started together, sharing
    ``n`` images: the job's actor layout without any I/O."""
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(processes), ctx.Queue()
    share = -(-n // processes)
    workers = [
        ctx.Process(
            target=_model_only_worker,
            args=(ckpt, sources, share, batch_size, threads, barrier, queue),
        )
        for _ in range(processes)
    ]
    for w in workers:
        w.start()
    seconds = [queue.get() for _ in workers]
    for w in workers:
        w.join()
    return share * processes / max(seconds)


# --- (c) naive loop ------------------------------------------------------------------------------
def naive(ckpt: Path, paths: list[Path], out: Path) -> float:
    loaded = load_checkpoint(ckpt)
    model = loaded.model.eval()
    mean = torch.tensor(loaded.preprocess.mean).view(3, 1, 1)
    std = torch.tensor(loaded.preprocess.std).view(3, 1, 1)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for p in paths:
        image = np.asarray(Image.open(p).convert("RGB"))
        x = torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255.0
        x = ((x - mean) / std).unsqueeze(0)
        with torch.no_grad():
            mask = model(x).argmax(dim=1)[0]
        Image.fromarray(mask.numpy().astype(np.uint8)).save(out / p.name)
    return len(paths) / (time.perf_counter() - start)


# --- (b) the job, with its memory ----------------------------------------------------------------
SAMPLE_SECONDS = 0.5
"""Between memory samples of the job's process tree (in-flight memory is capped, so peaks last
longer than that)."""
PSS_EVERY = 10
"""Samples between PSS readings: ``smaps_rollup`` walks every mapped page of a process (the
object store's too), about 80 ms of CPU per reading of the job's tree, which taken every 0.2 s
cost the measured job ~15% of its images/s; VmRSS is cheap."""


def _tree_memory_mb(root: int, *, pss: bool = True) -> tuple[float, float]:
    """(summed VmRSS, summed PSS or 0) of ``root`` and its descendants, from /proc (no
    psutil). RSS counts shared pages (libraries, the object store) once per process; PSS
    splits them."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    rss_kb = pss_kb = 0
    stack = [root]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/status") as f:
                rss_kb += next((int(x.split()[1]) for x in f if x.startswith("VmRSS:")), 0)
            if pss:
                with open(f"/proc/{pid}/smaps_rollup") as f:
                    pss_kb += next((int(x.split()[1]) for x in f if x.startswith("Pss:")), 0)
        except OSError:
            continue
    return rss_kb / 1024, pss_kb / 1024


def run_job(
    inputs: Path,
    out: Path,
    ckpt: Path,
    batch_size: int,
    num_cpus: int,
    actors: int,
    threads: int,
    *,
    fused: bool | None = None,
) -> dict:
    """The job as a new user runs it (``fused`` None: its automatic path); its summary plus
    wall time, peak memory of its process tree and the first mask's time after the start."""
    cmd = [
        sys.executable,
        str(REPO / "jobs" / "segment.py"),
        "--input",
        str(inputs),
        "--output",
        str(out),
        "--model",
        str(ckpt),
        *(["--batch-size", str(batch_size)] if batch_size else []),
        *([] if fused is None else ["--fused" if fused else "--no-fused"]),
        "--num-cpus",
        str(num_cpus),
        "--num-workers",  # a fixed pool of this many actors
        str(actors),
        "--torch-threads",
        str(threads),
        "--progress-seconds",
        "30",
        "--overwrite",
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_DATA_DISABLE_PROGRESS_BARS"] = "1"
    start, start_wall = time.perf_counter(), time.time()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=out.parent,
        start_new_session=True,
    )
    peak = [0.0, 0.0]

    def sample() -> None:
        samples = 0
        while proc.poll() is None:
            rss, pss = _tree_memory_mb(proc.pid, pss=samples % PSS_EVERY == 0)
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)
            samples += 1
            time.sleep(SAMPLE_SECONDS)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, _ = proc.communicate()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"segment.py failed ({proc.returncode}): {stdout[-2000:]}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    summary["wall_seconds"] = time.perf_counter() - start
    first = min(p.stat().st_mtime for p in (out / "masks").rglob("*.png"))
    summary["seconds_to_first_mask_from_start"] = first - start_wall  # Python + Ray start-up too
    summary["peak_rss_mb"], summary["peak_pss_mb"] = peak
    # Steady state: rows finished between the first and the last write (start-up excluded).
    import pyarrow.parquet as pq

    stamps = sorted(
        pq.read_table(summary["manifest"], columns=["finished_at"]).column(0).to_pylist()
    )
    # Rows of the first write task land together; count what came after them.
    first = sum(1 for t in stamps if (t - stamps[0]).total_seconds() < 0.3)
    span = (stamps[-1] - stamps[0]).total_seconds()
    summary["steady_images_per_second"] = (len(stamps) - first) / span if span > 1 else None
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=300, help="N (the memory run uses 10N)")
    parser.add_argument(
        "--naive-images",
        type=int,
        default=100,
        help="images per naive-loop run (its rate is per image)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="interleaved runs of (a), (b), (c) at N; the best of each counts",
    )
    parser.add_argument("--base-width", type=int, default=16)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=0,
        help="images per forward pass in (a) and (b); 0 = the job's auto value",
    )
    parser.add_argument(
        "--num-cpus", type=int, default=4, help="logical CPUs of the job's local Ray"
    )
    parser.add_argument(
        "--actors",
        type=int,
        default=0,
        help="predictor actors of the job and model copies of (a); 0 = the job's CPU default "
        "(one per core)",
    )
    parser.add_argument(
        "--torch-threads", type=int, default=0, help="threads per actor; 0 = cores / actors"
    )
    parser.add_argument("--data", type=Path, default=CAMVID, help="folder of source images")
    parser.add_argument("--skip-10n", action="store_true", help="skip the 10N memory run")
    parser.add_argument(
        "--skip-staged",
        action="store_true",
        help="skip the staged-path runs (--no-fused) beside the job's automatic path",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    args = parser.parse_args(argv)

    sources = sorted(p for p in args.data.iterdir() if p.suffix.lower() == ".png")
    with Image.open(sources[0]) as first:
        pixels = first.width * first.height
    # (a) batches as the job's auto value does (one 480x360 image per CPU forward pass)
    model_batch = args.batch_size or forward_batch(pixels, use_gpu=torch.cuda.is_available())
    cores = os.cpu_count() or 1
    args.actors = args.actors or cores
    args.torch_threads = args.torch_threads or max(1, cores // args.actors)
    layout = {"processes": args.actors, "threads": args.torch_threads}
    job = {"actors": args.actors, "threads": args.torch_threads}
    with tempfile.TemporaryDirectory(prefix="segbench-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        ckpt = make_model(work / "unet.pt", base_width=args.base_width, depth=args.depth)
        n = args.images
        paths = make_inputs(work / "inputs_n", sources, n)

        def job_run(inputs: str, out: str, fused: bool | None = None) -> dict:
            return run_job(
                work / inputs,
                work / out,
                ckpt,
                args.batch_size,
                args.num_cpus,
                **job,
                fused=fused,
            )

        # On a shared machine the runs are interleaved and the best of each kind counts:
        # contention from others then cannot favour one kind over another.
        load_start = os.getloadavg()[0]
        a_runs, b_runs, s_runs, c_runs = [], [], [], []
        for r in range(args.repeats):
            a_runs.append(model_only(ckpt, sources, n, model_batch, **layout))
            b_runs.append(job_run("inputs_n", "out_n"))
            if not args.skip_staged:
                s_runs.append(job_run("inputs_n", "out_staged", fused=False))
            c_runs.append(naive(ckpt, paths[: args.naive_images], work / "naive"))
            staged = f", staged {s_runs[-1]['images_per_second']:.2f}" if s_runs else ""
            print(
                f"round {r + 1}: (a) {a_runs[-1]:.2f}, (b) {b_runs[-1]['images_per_second']:.2f} "
                f"(steady {b_runs[-1]['steady_images_per_second'] or 0:.2f}{staged}), "
                f"(c) {c_runs[-1]:.2f} images/s; peak RSS {b_runs[-1]['peak_rss_mb']:.0f} MB; "
                f"first mask {b_runs[-1]['seconds_to_first_mask_from_start']:.1f} s; load "
                f"{os.getloadavg()[0]:.2f}",
                file=sys.stderr,
                flush=True,
            )
        a, c = max(a_runs), max(c_runs)
        b = max(b_runs, key=lambda x: x["images_per_second"])
        b10 = None
        if not args.skip_10n:
            make_inputs(work / "inputs_10n", sources, 10 * n)
            b10 = job_run("inputs_10n", "out_10n")
            print(
                f"(b) job, 10N={10 * n}: {b10['images_per_second']:.2f} images/s, peak RSS "
                f"{b10['peak_rss_mb']:.0f} MB",
                file=sys.stderr,
                flush=True,
            )

    def ratio(x: float | None, y: float) -> float | None:
        return None if x is None else round(x / y, 3)

    pipeline = b["images_per_second"]
    pipeline_10n = b10["images_per_second"] if b10 else None
    staged = max((x["images_per_second"] for x in s_runs), default=None)
    steady = max(x["steady_images_per_second"] or 0 for x in b_runs)
    peak_n = max(x["peak_rss_mb"] for x in b_runs)
    result = {
        "model_only_images_per_second": round(a, 3),
        "pipeline_images_per_second": round(pipeline, 3),
        "naive_images_per_second": round(c, 3),
        "pipeline_vs_model": round(pipeline / a, 3),
        "pipeline_vs_naive": round(pipeline / c, 3),
        "pipeline_images_per_second_10n": ratio(pipeline_10n, 1.0),
        "pipeline_vs_model_10n": ratio(pipeline_10n, a),
        "pipeline_vs_naive_10n": ratio(pipeline_10n, c),
        "seconds_to_first_mask": round(
            min(x["seconds_to_first_mask_from_start"] for x in b_runs), 2
        ),
        "pipeline_seconds_to_first_mask": min(x["seconds_to_first_mask"] for x in b_runs),
        "peak_rss_mb_n": round(peak_n, 1),
        "peak_rss_mb_10n": round(b10["peak_rss_mb"], 1) if b10 else None,
        "peak_rss_10n_vs_n": round(b10["peak_rss_mb"] / peak_n, 3) if b10 else None,
        "peak_pss_mb_n": round(max(x["peak_pss_mb"] for x in b_runs), 1),
        "peak_pss_mb_10n": round(b10["peak_pss_mb"], 1) if b10 else None,
        "staged_images_per_second": ratio(staged, 1.0),
        "staged_vs_model": ratio(staged, a),
        "pipeline_vs_staged": None if staged is None else round(pipeline / staged, 3),
        "pipeline_steady_images_per_second": round(steady, 3),
        "pipeline_steady_vs_model": round(steady / a, 3),
        "pipeline_steady_images_per_second_10n": ratio(
            b10 and b10["steady_images_per_second"], 1.0
        ),
        "pipeline_steady_vs_model_10n": ratio(b10 and b10["steady_images_per_second"], a),
        "pipeline_startup_seconds_10n": None
        if not b10 or not b10["steady_images_per_second"]
        else round(b10["pipeline_seconds"] - 10 * n / b10["steady_images_per_second"], 2),
        "model_only_runs": [round(x, 3) for x in a_runs],
        "pipeline_runs": [round(x["images_per_second"], 3) for x in b_runs],
        "staged_runs": [round(x["images_per_second"], 3) for x in s_runs],
        "naive_runs": [round(x, 3) for x in c_runs],
        "peak_rss_mb_runs_n": [round(x["peak_rss_mb"], 1) for x in b_runs],
        "pipeline_wall_seconds_n": round(b["wall_seconds"], 2),
        "pipeline_seconds_n": b["pipeline_seconds"],
        "images": n,
        "naive_images": min(args.naive_images, n),
        "model": f"UNet base_width={args.base_width} depth={args.depth} 3->{len(CAMVID_CLASSES)} "
        "classes, random weights",
        "precision": "bf16 autocast (native CPU bf16)" if cpu_supports_bf16() else "fp32",
        "naive_precision": "fp32",
        "batch_size": args.batch_size or f"auto ({model_batch})",
        "actors": args.actors,
        "torch_threads_per_actor": args.torch_threads,
        "image_size": "480x360 RGB PNG (CamVid val)",
        "cores": os.cpu_count(),
        "load_average_1m": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "command": "python benchmarks/segment_throughput.py " + " ".join(argv or sys.argv[1:]),
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
