"""GPU throughput and MFU: the model alone, the segment job end to end, Ray Train against a plain loop.

    python benchmarks/gpu_benchmark.py                     # on a CUDA machine: gpu_benchmark.json
    python benchmarks/gpu_benchmark.py --smoke-cpu --out /tmp/smoke.json   # code paths, on CPU

(a) model: UNet w16/w32/w64 (depth 4) forward at 256x256 and 512x512 (a batch size per size),
    bf16 autocast (fp16 on compute capability < 8), channels-last, BatchNorm folded, inference
    mode; warm-up, then timed between `torch.cuda.synchronize` calls. FLOPs of one forward from
    `torch.utils.flop_counter.FlopCounterMode` (convolutions and matmuls; norms and activations
    are left out); MFU = achieved FLOPs / the device's dense fp16/bf16 tensor peak (PEAK_TFLOPS,
    null for a device not in it). Then training steps (forward, backward, AdamW: the project's
    `unet_core.engine.train_one_epoch`, bf16 autocast as the training job uses) for --train-width.
(b) segment: `python jobs/segment.py --device gpu` on its own local Ray over N
    generated images (--segment-images, 512x512 by default), against model-only throughput of
    the same model, size and batch (the job's rate includes decode, encode and writes).
(c) train: `python jobs/train.py` with one GPU worker on a generated data set against a plain
    single-process loop of the same model, batch, crop and steps (in-memory tensors); images/s
    of each over the epochs after the first (the job's own `images_per_second`).

Writes one JSON object to --out and prints it. Without CUDA it exits 2, unless --smoke-cpu:
every part then runs on the CPU with tiny sizes (w8, 64x64, a few images and steps), which
checks the code paths, not the speed. Exit 1 when a measurement failed (its entry says why).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from benchmarks.segment_throughput import CAMVID_CLASSES, make_inputs, make_model  # noqa: E402
from unet_core.config import ModelConfig, PreprocessConfig, TrainConfig  # noqa: E402
from unet_core.data import pair_images_and_masks, read_image, read_mask  # noqa: E402
from unet_core.engine import make_optimizer, train_one_epoch  # noqa: E402
from unet_core.losses import SegmentationLoss  # noqa: E402
from unet_core.model import UNet  # noqa: E402
from unet_core.precision import autocast, autocast_dtype  # noqa: E402
from unet_core.predict import enable_cudnn_benchmark, prepare_for_inference  # noqa: E402
from unet_core.synthetic import make_synthetic_dataset  # noqa: E402
from unet_core.transforms import to_tensors  # noqa: E402

NUM_CLASSES = len(CAMVID_CLASSES)  # the model of segment_throughput.make_model, used in (b)
PARTS = ("model", "segment", "train")

# Dense (no sparsity) fp16/bf16 tensor-core TFLOPS with fp32 accumulation, from NVIDIA's
# datasheets (their headline figures with sparsity are twice these). First match wins, so the
# more specific names come first; matched case-insensitively against get_device_name().
PEAK_TFLOPS: tuple[tuple[str, float, str], ...] = (
    (r"\bGH200\b", 989.0, "GH200 datasheet (H100-class GPU), 1,979 with sparsity"),
    (r"\bH200 NVL\b", 835.0, "H200 NVL datasheet, 1,671 with sparsity"),
    (r"\bH200\b", 989.0, "H200 SXM datasheet, 1,979 with sparsity"),
    (r"\bH100 NVL\b", 835.0, "H100 NVL datasheet, 1,671 with sparsity"),
    (r"\bH100 PCIe\b", 756.0, "H100 PCIe datasheet, 1,513 with sparsity"),
    (r"\bH100\b", 989.0, "H100 SXM datasheet, 1,979 with sparsity"),
    (r"\bA100\b", 312.0, "A100 datasheet (SXM and PCIe), 624 with sparsity"),
    (r"\bL40S\b", 362.0, "L40S datasheet, 733 with sparsity"),
    (r"\bL40\b", 181.0, "L40 datasheet, 362 with sparsity"),
    (r"\bL4\b", 121.0, "L4 datasheet, 242 with sparsity"),
    # The A10G (AWS g5) has no public NVIDIA datasheet: 70 is an often-quoted figure, not
    # checked against a primary source; the A10's datasheet says 125 (MFU would read 1.8x lower).
    (r"\bA10G\b", 70.0, "no datasheet; unverified approximation (the A10 is 125)"),
    (r"\bA10\b", 125.0, "A10 datasheet, 250 with sparsity"),
    (r"\bRTX 4090\b", 165.0, "Ada Lovelace whitepaper (330 with fp16 accumulation)"),
    (r"\bV100-PCIE\b", 112.0, "V100 datasheet, PCIe (fp16 tensor)"),
    (r"\bV100\b", 125.0, "V100 datasheet, SXM2 (fp16 tensor)"),
    (r"\bT4\b", 65.0, "T4 datasheet (fp16 tensor, mixed precision)"),
)

SMOKE_DEFAULTS: dict[str, Any] = {
    "widths": "8",
    "sizes": "64",
    "batch_sizes": "2",
    "warmup": 1,
    "iters": 2,
    "train_width": 8,
    "train_steps": 2,
    "segment_images": 8,
    "segment_size": 64,
    "segment_width": 8,
    "segment_batch_size": 2,
    "train_images": 8,
    "train_size": 64,
    "train_batch_size": 4,
    "train_epochs": 2,
}
"""--smoke-cpu: tiny sizes, so that every part runs on the CPU in about a minute."""


# --- device facts ---------------------------------------------------------------------------


def peak_tflops(device_name: str) -> tuple[float | None, str | None]:
    """(dense fp16/bf16 tensor TFLOPS, source) for a device name; (None, None) if unknown."""
    for pattern, tflops, source in PEAK_TFLOPS:
        if re.search(pattern, device_name, re.IGNORECASE):
            return tflops, source
    return None, None


def environment(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu_count": os.cpu_count(),
        "inference_dtype": str(autocast_dtype(device)),
        "train_dtype": str(autocast_dtype(device, training=True)),
    }
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak, source = peak_tflops(name)
        info.update(
            device_name=name,
            capability=".".join(map(str, torch.cuda.get_device_capability(device))),
            gpus=torch.cuda.device_count(),
            memory_gib=round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1),
            peak_tflops=peak,
            peak_source=source,
        )
    else:
        info.update(device_name="cpu", peak_tflops=None, peak_source=None)
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_config(width: int, depth: int, num_classes: int = NUM_CLASSES) -> ModelConfig:
    return ModelConfig(in_channels=3, num_classes=num_classes, base_width=width, depth=depth)


def flops_per_image(config: ModelConfig, size: int, *, backward: bool = False) -> int:
    """FLOPs of one forward (and backward) of one size x size image, counted on the meta device."""
    with torch.device("meta"):
        model = UNet.from_config(config)
        x = torch.empty(1, 3, size, size)
    with FlopCounterMode(display=False) as counter:
        out = model(x)
        if backward:
            out.float().sum().backward()
    return counter.get_total_flops()


def rates(images_per_second: float, flops: int, peak: float | None) -> dict[str, Any]:
    achieved = images_per_second * flops / 1e12
    return {
        "images_per_second": round(images_per_second, 2),
        "gflops_per_image": round(flops / 1e9, 3),
        "achieved_tflops": round(achieved, 3),
        "mfu": round(achieved / peak, 4) if peak else None,
    }


def _peak_memory_mib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda" else None


def _fresh(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# --- (a) the model alone ------------------------------------------------------------------------


def forward_throughput(
    device: torch.device,
    *,
    width: int,
    depth: int,
    size: int,
    batch: int,
    warmup: int,
    iters: int,
    peak: float | None,
) -> dict[str, Any]:
    """Forward passes of a prepared model (folded BN, channels-last) on one resident batch."""
    _fresh(device)
    torch.manual_seed(0)
    config = model_config(width, depth)
    model = prepare_for_inference(UNet.from_config(config), device)
    x = torch.randn(batch, 3, size, size, device=device)  # (B, 3, H, W)
    x = x.contiguous(memory_format=torch.channels_last)
    dtype = autocast_dtype(device)  # bf16; fp16 on CUDA before compute capability 8.0
    with torch.inference_mode(), autocast(device, dtype):
        for _ in range(warmup):
            model(x)
        sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            model(x)
        sync(device)
        seconds = time.perf_counter() - start
    return {
        "width": width,
        "size": size,
        "batch_size": batch,
        "dtype": str(dtype),
        **rates(batch * iters / seconds, flops_per_image(config, size), peak),
        "peak_memory_mib": _peak_memory_mib(device),
    }


def train_throughput(
    device: torch.device,
    *,
    width: int,
    depth: int,
    size: int,
    batch: int,
    warmup: int,
    steps: int,
    peak: float | None,
) -> dict[str, Any]:
    """Training steps (forward, backward, AdamW) on one resident batch, as the job trains."""
    _fresh(device)
    torch.manual_seed(0)
    config = model_config(width, depth)
    model = UNet.from_config(config).to(device).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, TrainConfig())
    loss_fn = SegmentationLoss(NUM_CLASSES)
    x = torch.randn(batch, 3, size, size, device=device)  # (B, 3, H, W)
    y = torch.randint(0, NUM_CLASSES, (batch, size, size), device=device)  # (B, H, W)
    dtype = autocast_dtype(device, training=True)
    run = dict(device=device, amp_dtype=dtype, max_grad_norm=1.0)
    train_one_epoch(model, [(x, y)] * warmup, optimizer, loss_fn, **run)  # ends with a sync
    stats = train_one_epoch(model, [(x, y)] * steps, optimizer, loss_fn, **run)
    return {
        "width": width,
        "size": size,
        "batch_size": batch,
        "dtype": str(dtype),
        **rates(stats.images_per_second, flops_per_image(config, size, backward=True), peak),
        "peak_memory_mib": _peak_memory_mib(device),
    }


def measured(fn, **kwargs) -> dict[str, Any]:
    """``fn(**kwargs)``, or its settings and the error (e.g. out of memory): one failed size
    does not lose the others."""
    try:
        return fn(**kwargs)
    except RuntimeError as exc:  # torch.cuda.OutOfMemoryError among them
        settings = {k: v for k, v in kwargs.items() if k not in ("device", "peak")}
        return {**settings, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}


def model_part(
    device: torch.device, args: argparse.Namespace, work: Path, peak: float | None
) -> dict[str, Any]:
    sizes = list(zip(args.sizes, args.batch_sizes, strict=True))
    timing = dict(warmup=args.warmup, depth=args.depth, peak=peak)
    inference = [
        measured(
            forward_throughput, device=device, width=w, size=s, batch=b, iters=args.iters, **timing
        )
        for w in args.widths
        for s, b in sizes
    ]
    training = [
        measured(
            train_throughput,
            device=device,
            width=args.train_width,
            size=s,
            batch=b,
            steps=args.train_steps,
            **timing,
        )
        for s, b in sizes
    ]
    return {"inference": inference, "training": training}


# --- the jobs as subprocesses -------------------------------------------------------------------


class JobFailed(RuntimeError):
    pass


def run_job(script: str, argv: list[str], *, cwd: Path, timeout: float) -> dict[str, Any]:
    """Run ``jobs/<script>`` on its own local Ray; its JSON summary (last stdout line). On a
    timeout its process group (the job and the Ray it started) is ended."""
    log_path = cwd / f"{Path(script).stem}.stderr.log"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_DATA_DISABLE_PROGRESS_BARS"] = "1"
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "jobs" / script), *argv],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        try:
            stdout, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.communicate(timeout=60)
            message = f"{script} ran past --job-timeout {timeout:.0f} s; see {log_path}"
            raise JobFailed(message) from None
    lines = [line for line in stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        tail = log_path.read_text()[-1500:]
        raise JobFailed(f"{script} exited {proc.returncode}: {tail}")
    summary = json.loads(lines[-1])
    summary["wall_seconds"] = round(time.perf_counter() - start, 2)
    return summary


# --- (b) the segment job ------------------------------------------------------------------------


def segment_part(
    device: torch.device, args: argparse.Namespace, work: Path, peak: float | None
) -> dict[str, Any]:
    """The job over --segment-images generated images against the model alone, same settings."""
    n, size, width = args.segment_images, args.segment_size, args.segment_width
    ckpt = make_model(work / "unet.pt", base_width=width, depth=args.depth)
    make_synthetic_dataset(work / "sources", num_images=min(16, n), size=size, seed=1)
    sources = sorted((work / "sources" / "images").glob("*.png"))
    make_inputs(work / "inputs", sources, n)  # N symlinks to the distinct sources
    where = "gpu" if device.type == "cuda" else "cpu"
    summary = run_job(
        "segment.py",
        ["--input", str(work / "inputs"), "--output", str(work / "output"), "--model", str(ckpt),
         "--device", where, "--batch-size", str(args.segment_batch_size),
         "--progress-seconds", "30", "--overwrite"],
        cwd=work,
        timeout=args.job_timeout,
    )  # fmt: skip
    model_only = forward_throughput(
        device,
        width=width,
        depth=args.depth,
        size=size,
        batch=args.segment_batch_size,
        warmup=args.warmup,
        iters=args.iters,
        peak=peak,
    )
    job_rate = float(summary["images_per_second"])
    return {
        "images": n,
        "size": size,
        "width": width,
        "batch_size": args.segment_batch_size,
        "job_images_per_second": round(job_rate, 2),
        "model_only_images_per_second": model_only["images_per_second"],
        "job_vs_model_only": round(job_rate / model_only["images_per_second"], 3),
        "job_pipeline_seconds": summary.get("pipeline_seconds"),
        "job_wall_seconds": summary["wall_seconds"],
        "job_summary": {k: v for k, v in summary.items() if not isinstance(v, (dict, list))},
    }


# --- (c) Ray Train with one worker against a plain loop -----------------------------------------


def plain_loop(
    device: torch.device, root: Path, class_map, args: argparse.Namespace
) -> list[float]:
    """images/s per epoch of train_one_epoch over the decoded set in memory, shuffled per epoch."""
    preprocess = PreprocessConfig.for_channels(3)
    tensors = [
        to_tensors(
            read_image(root / p.image, channels=3), read_mask(root / p.mask, class_map), preprocess
        )
        for p in pair_images_and_masks(root)
    ]
    images = torch.stack([x for x, _ in tensors])  # (N, 3, H, W)
    masks = torch.stack([y for _, y in tensors])  # (N, H, W)
    torch.manual_seed(0)
    config = model_config(args.train_width, args.depth, class_map.num_classes)
    model = UNet.from_config(config).to(device).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, TrainConfig(lr=1e-3))
    loss_fn = SegmentationLoss(class_map.num_classes)
    bs, speeds = args.train_batch_size, []
    for epoch in range(args.train_epochs):
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(epoch))
        batches = (
            (images[order[i : i + bs]], masks[order[i : i + bs]])
            for i in range(0, len(images) - bs + 1, bs)  # full batches, as the job's shards
        )
        stats = train_one_epoch(
            model,
            batches,
            optimizer,
            loss_fn,
            device=device,
            amp_dtype=autocast_dtype(device, training=True),
            max_grad_norm=1.0,
        )
        speeds.append(stats.images_per_second)
    return speeds


def job_history(summary: dict[str, Any]) -> dict[str, list[float]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(summary["tracking_uri"])
    return {
        key: [
            m.value
            for m in sorted(client.get_metric_history(summary["run_id"], key), key=lambda m: m.step)
        ]
        for key in ("images_per_second", "data_wait_seconds")
    }


def train_part(
    device: torch.device, args: argparse.Namespace, work: Path, peak: float | None
) -> dict[str, Any]:
    """`jobs/train.py` with one worker and the plain loop, on the same generated set; crops are
    the whole images (--train-size) and augmentation is off, so both see the same tensors."""
    root = work / "train_data"
    class_map = make_synthetic_dataset(
        root, num_images=args.train_images, size=args.train_size, seed=0
    )
    val_root = work / "val_data"  # cases of its own: --val-data sharing keys is refused
    make_synthetic_dataset(val_root, num_images=2, size=args.train_size, seed=1, prefix="val")
    summary = run_job(
        "train.py",
        ["--data", str(root), "--val-data", str(val_root), "--num-workers", "1",
         "--device", "gpu" if device.type == "cuda" else "cpu",
         "--epochs", str(args.train_epochs), "--batch-size", str(args.train_batch_size),
         "--crop-size", str(args.train_size), "--no-augment", "--lr", "1e-3",
         "--base-width", str(args.train_width), "--depth", str(args.depth),
         "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}",
         "--storage-path", str(work / "runs"), "--run-name", "gpu-benchmark",
         "--log-level", "WARNING"],
        cwd=work,
        timeout=args.job_timeout,
    )  # fmt: skip
    history = job_history(summary)
    plain = plain_loop(device, root, class_map, args)
    steady = plain[1:] or plain  # the first epoch warms up, as in the job's summary
    plain_rate = sum(steady) / len(steady)
    job_rate = float(summary["images_per_second"])
    return {
        "images": args.train_images,
        "size": args.train_size,
        "width": args.train_width,
        "batch_size": args.train_batch_size,
        "epochs": args.train_epochs,
        "steps_per_epoch": args.train_images // args.train_batch_size,
        "ray_train_images_per_second": round(job_rate, 2),
        "plain_images_per_second": round(plain_rate, 2),
        "ray_vs_plain": round(job_rate / plain_rate, 3),
        "per_epoch": {
            "ray_train": [round(v, 2) for v in history["images_per_second"]],
            "ray_data_wait_seconds": [round(v, 3) for v in history["data_wait_seconds"]],
            "plain": [round(v, 2) for v in plain],
        },
        "job_wall_seconds": summary["wall_seconds"],
    }


# --- driver -------------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = p.add_argument
    add("--out", type=Path, default=Path("gpu_benchmark.json"), help="JSON file to write")
    add("--smoke-cpu", action="store_true", help="run every part on the CPU with tiny sizes")
    add("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    add("--widths", default="16,32,64", help="(a) UNet base widths")
    add("--depth", type=int, default=4, help="UNet depth of every model")
    add("--sizes", default="256,512", help="(a) square input sides in pixels")
    add("--batch-sizes", default="32,8", help="(a) a batch size per --sizes entry")
    add("--warmup", type=int, default=10, help="(a) untimed iterations before timing")
    add("--iters", type=int, default=50, help="(a) timed forward passes per entry")
    add("--train-width", type=int, default=32, help="(a) base width of the training-step model")
    add("--train-steps", type=int, default=30, help="(a) timed training steps per size")
    add("--segment-images", type=int, default=2000, help="(b) generated images the job segments")
    add("--segment-size", type=int, default=512, help="(b) their side in pixels")
    add("--segment-width", type=int, default=32, help="(b) base width of the job's model")
    add("--segment-batch-size", type=int, default=16, help="(b) images per forward pass")
    add("--train-images", type=int, default=512, help="(c) generated training images")
    add("--train-size", type=int, default=256, help="(c) their side, also the crop")
    add("--train-batch-size", type=int, default=32, help="(c) images per step")
    add("--train-epochs", type=int, default=4, help="(c) epochs of each loop (first left out)")
    add("--job-timeout", type=float, default=400, help="(b), (c) seconds before a job is ended")
    add("--workdir", type=Path, default=None, help="folder for generated data (default: temp)")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    smoke = argparse.ArgumentParser(add_help=False)
    smoke.add_argument("--smoke-cpu", action="store_true")
    if smoke.parse_known_args(argv)[0].smoke_cpu:
        parser.set_defaults(**SMOKE_DEFAULTS)  # flags given still win
    args = parser.parse_args(argv)
    args.parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    args.widths, args.sizes = _ints(args.widths), _ints(args.sizes)
    args.batch_sizes = _ints(args.batch_sizes)
    if unknown := sorted(set(args.parts) - set(PARTS)):
        parser.error(f"--parts: unknown {unknown}; choose from {', '.join(PARTS)}")
    if len(args.sizes) != len(args.batch_sizes):
        parser.error(f"--batch-sizes needs one value per --sizes entry, got {args.batch_sizes}")
    if args.train_images < args.train_batch_size:
        parser.error("--train-images must be at least --train-batch-size")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available() and not args.smoke_cpu:
        print(
            f"no CUDA device: torch.cuda.is_available() is False (torch {torch.__version__}, "
            f"CUDA build {torch.version.cuda}); run it on a GPU node, or pass --smoke-cpu to "
            "run every part on the CPU with tiny sizes",
            file=sys.stderr,
        )
        return 2
    device = torch.device("cpu" if args.smoke_cpu else "cuda")
    enable_cudnn_benchmark(device)  # fixed shapes: cuDNN picks its fastest kernels once
    env = environment(device)
    started = time.time()
    result: dict[str, Any] = {"smoke_cpu": args.smoke_cpu, "environment": env}
    with tempfile.TemporaryDirectory(prefix="gpubench-") as tmp:
        work = (args.workdir or Path(tmp)).resolve()
        for part, run in (("model", model_part), ("segment", segment_part), ("train", train_part)):
            if part not in args.parts:
                result[part] = None
                continue
            folder = work / part
            folder.mkdir(parents=True, exist_ok=True)
            part_start = time.time()
            print(f"part {part} ...", file=sys.stderr, flush=True)
            try:
                result[part] = run(device, args, folder, env["peak_tflops"])
            except Exception as exc:  # the other parts still run; the entry says why
                result[part] = {"error": f"{type(exc).__name__}: {str(exc)[:2000]}"}
            result[part] = {**result[part], "seconds": round(time.time() - part_start, 1)}
    result["seconds"] = round(time.time() - started, 1)
    result["command"] = "python benchmarks/gpu_benchmark.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    text = json.dumps(result, indent=1)
    args.out.write_text(text + "\n")
    print(text, flush=True)
    return 1 if _has_error(result) else 0


def _has_error(value: Any) -> bool:
    if isinstance(value, dict):
        return "error" in value or any(_has_error(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_error(v) for v in value)
    return False


if __name__ == "__main__":
    sys.exit(main())
