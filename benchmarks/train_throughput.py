"""Training throughput: a plain PyTorch loop vs this project's Ray Train loop, same everything.

    .venv/bin/python benchmarks/train_throughput.py            # prints one JSON object
    .venv/bin/python benchmarks/train_throughput.py --amp compare --size 256 --images 16 \
        --depth 4 --norm batch --epochs 3 --warmup 1 --rounds 6   # fp32 vs bf16, plain loop

(a) plain: `unet_core.engine.train_one_epoch` over batches of in-memory tensors in this process.
(b) ray:   `jobs/train.py` with one Ray Train worker (Ray Data decoding, the worker's collate,
           checkpoints and MLflow logging around each epoch), timed by the worker per epoch.
`--amp compare` runs only (a), in fp32 and in bf16 autocast by turns (off, bf16, off, bf16),
and reports both: whether bf16 pays for training (forward + backward) on this device.
Same data (generated), model, batch size, torch threads and epochs. The plain loop runs
before and after the Ray one (other load on a shared machine drifts). The first `--warmup`
epochs of each are left out (process start, Ray Data start-up, allocator warm-up): the
figures are steady-state images/s of the training loop, validation excluded in both.

Both loops use `--threads` torch threads, by default one core fewer than the machine has: a
Ray node runs its own processes (raylet, GCS, Ray Train's controller and watchers, idle
workers, the dataset split coordinator) next to the training worker, and on a small machine
a worker whose threads take every core loses much more than that share (compare with
`--threads $(nproc)`). Ray workers run at nice 0 here, like the plain loop (Ray's default
is 15, which on a shared machine measures other users' load instead).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Ray starts a 1-CPU worker with OMP_NUM_THREADS=1; give the plain loop the same environment
# (both then set `--threads` intra-op threads), or the two would not run the same kernels setup.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Ray runs its workers at nice 15 by default; on a shared machine that measures other users'
# load, not this loop. The plain loop runs at nice 0, so the Ray workers do too here.
os.environ.setdefault("RAY_worker_niceness", "0")

import torch  # noqa: E402

from jobs.training.config import AMP_MODES, amp_flag  # noqa: E402
from unet_core.classes import ClassMap  # noqa: E402
from unet_core.config import ModelConfig, PreprocessConfig, TrainConfig  # noqa: E402
from unet_core.data import pair_images_and_masks, read_image, read_mask  # noqa: E402
from unet_core.engine import make_optimizer, make_scheduler, train_one_epoch  # noqa: E402
from unet_core.losses import SegmentationLoss  # noqa: E402
from unet_core.model import UNet  # noqa: E402
from unet_core.precision import autocast_dtype, cpu_supports_bf16  # noqa: E402
from unet_core.synthetic import make_synthetic_dataset  # noqa: E402
from unet_core.transforms import to_tensors  # noqa: E402


def plain_loop(
    root: Path, class_map: ClassMap, args: argparse.Namespace, amp: str | None = None
) -> list[float]:
    """images/s per epoch of the single-process loop over in-memory tensors; ``amp``
    (auto|bf16|off) defaults to ``args.amp``."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    preprocess = PreprocessConfig.for_channels(3)
    pairs = pair_images_and_masks(root)
    tensors = [
        to_tensors(
            read_image(root / p.image, channels=3), read_mask(root / p.mask, class_map), preprocess
        )
        for p in pairs
    ]
    images = torch.stack([x for x, _ in tensors])  # (N, C, H, W)
    masks = torch.stack([y for _, y in tensors])  # (N, H, W)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=1e-3, crop_size=0)
    model = UNet.from_config(model_config(args, class_map.num_classes)).to(device)
    model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg)
    steps = -(-len(pairs) // args.batch_size)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch=steps)
    loss_fn = SegmentationLoss(class_map.num_classes)
    amp_dtype = autocast_dtype(device, amp_flag(amp or args.amp), training=True)
    speeds = []
    for epoch in range(args.epochs):
        order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(epoch))
        batches = (
            (images[order[i : i + args.batch_size]], masks[order[i : i + args.batch_size]])
            for i in range(0, len(pairs), args.batch_size)
        )
        stats = train_one_epoch(
            model,
            batches,
            optimizer,
            loss_fn,
            device=device,
            scheduler=scheduler,
            amp_dtype=amp_dtype,
            max_grad_norm=cfg.max_grad_norm,
        )
        speeds.append(stats.images_per_second)
    return speeds


def model_config(args: argparse.Namespace, num_classes: int) -> ModelConfig:
    return ModelConfig(
        in_channels=3,
        num_classes=num_classes,
        base_width=args.base_width,
        depth=args.depth,
        norm=args.norm,
    )


def val_root_of(root: Path) -> Path:
    """The small validation set beside a generated training set."""
    return root.parent / f"{root.name}_val"


def ray_loop(root: Path, args: argparse.Namespace, scratch: Path) -> dict[str, list[float]]:
    """images/s and data-wait seconds per epoch that the Ray Train worker measured (from the
    run's MLflow history)."""
    from mlflow.tracking import MlflowClient

    from jobs.train import main

    uri = f"sqlite:///{scratch / 'mlflow.db'}"
    argv = [
        "--data", str(root), "--val-data", str(val_root_of(root)), "--num-workers", "1",
        "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--crop-size", "0",
        "--no-augment", "--lr", "1e-3", "--base-width", str(args.base_width),
        "--depth", str(args.depth), "--norm", args.norm, "--torch-threads", str(args.threads),
        "--cpus-per-worker", "1", "--tracking-uri", uri, "--storage-path", str(scratch / "runs"),
        "--run-name", "throughput", "--log-level", "WARNING", "--amp", args.amp,
    ]  # fmt: skip
    import ray

    if args.no_dashboard and not ray.is_initialized():  # the job then uses this Ray as is
        ray.init(num_cpus=max(4, 2 * (os.cpu_count() or 1)), include_dashboard=False)
    cwd = os.getcwd()
    os.chdir(scratch)  # MLflow artifacts go to ./mlruns
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout is this benchmark's JSON only
            code = main(argv)
        if code != 0:
            raise SystemExit("the training job failed")
    finally:
        os.chdir(cwd)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("unet")
    (run,) = client.search_runs([experiment.experiment_id], max_results=1)
    return {
        key: [
            m.value
            for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        ]
        for key in ("images_per_second", "data_wait_seconds")
    }


def steady_mean(*runs: list[float], warmup: int) -> float:
    """Mean images/s over the epochs after the first ``warmup`` of each run."""
    speeds = [v for run in runs for v in run[warmup:]]
    return sum(speeds) / len(speeds)


def plain_vs_ray(root: Path, class_map: ClassMap, args: argparse.Namespace, scratch: Path) -> dict:
    # plain before and after: other load on the machine drifts, and this halves its bias
    plain = plain_loop(root, class_map, args)
    ray_history = ray_loop(root, args, scratch)
    plain_after = plain_loop(root, class_map, args)
    ray_speeds = ray_history["images_per_second"]
    plain_ips = steady_mean(plain, plain_after, warmup=args.warmup)
    ray_ips = steady_mean(ray_speeds, warmup=args.warmup)
    return {
        "plain_images_per_second": round(plain_ips, 2),
        "ray_images_per_second": round(ray_ips, 2),
        "ratio": round(ray_ips / plain_ips, 3),
        "per_epoch": {
            "plain_before": [round(v, 2) for v in plain],
            "ray": [round(v, 2) for v in ray_speeds],
            "plain_after": [round(v, 2) for v in plain_after],
            "ray_data_wait_seconds": [round(v, 3) for v in ray_history["data_wait_seconds"]],
        },
    }


def amp_comparison(root: Path, class_map: ClassMap, args: argparse.Namespace) -> dict:
    """The plain loop in fp32 and in bf16 autocast, by turns (load drifts on a shared machine)."""
    runs: dict[str, list[list[float]]] = {"off": [], "bf16": []}
    for _ in range(args.rounds):
        for amp in runs:
            runs[amp].append(plain_loop(root, class_map, args, amp))
    steady = {
        amp: [v for run in amp_runs for v in run[args.warmup :]] for amp, amp_runs in runs.items()
    }
    fp32, bf16 = (sum(steady[a]) / len(steady[a]) for a in ("off", "bf16"))
    # Other load only slows epochs down: the median and the best epoch are the robust figures.
    median = {amp: statistics.median(v) for amp, v in steady.items()}
    best = {amp: max(v) for amp, v in steady.items()}
    return {
        "fp32_images_per_second": round(fp32, 2),
        "bf16_images_per_second": round(bf16, 2),
        "bf16_speedup": round(bf16 / fp32, 3),
        "bf16_speedup_median": round(median["bf16"] / median["off"], 3),
        "bf16_speedup_best": round(best["bf16"] / best["off"], 3),
        "median_images_per_second": {amp: round(v, 2) for amp, v in median.items()},
        "best_images_per_second": {amp: round(v, 2) for amp, v in best.items()},
        "cpu_supports_bf16": cpu_supports_bf16(),
        "per_epoch": {
            amp: [[round(v, 2) for v in run] for run in amp_runs] for amp, amp_runs in runs.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=256, help="generated training images")
    parser.add_argument("--size", type=int, default=96, help="image side in pixels")
    parser.add_argument("--batch-size", type=int, default=8, help="images per step")
    parser.add_argument("--base-width", type=int, default=16, help="UNet base width")
    parser.add_argument("--depth", type=int, default=3, help="UNet depth")
    parser.add_argument("--norm", default="group", help="batch, group or none")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per loop")
    parser.add_argument("--warmup", type=int, default=2, help="first epochs left out")
    parser.add_argument(
        "--amp",
        choices=(*AMP_MODES, "compare"),
        default="auto",
        help="mixed precision of both loops: auto (the training default: bf16 on CUDA, fp32 on "
        "the CPU), bf16, off (fp32); compare = the plain loop only, fp32 against bf16",
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="with --amp compare: fp32/bf16 pairs of runs"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=max(1, (os.cpu_count() or 1) - 1),
        help="torch threads in both loops (default: one core left for Ray's own processes)",
    )
    parser.add_argument(
        "--no-dashboard",
        action="store_true",
        help="start Ray without its dashboard (its metrics agents take CPU on small machines)",
    )
    args = parser.parse_args(argv)
    if args.epochs <= args.warmup:
        parser.error("--epochs must exceed --warmup")

    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        root = scratch / "data"
        class_map = make_synthetic_dataset(root, num_images=args.images, size=args.size, seed=0)
        # validation needs cases of its own (--val-data sharing keys is refused): 2 images
        make_synthetic_dataset(
            val_root_of(root), num_images=2, size=args.size, seed=1, prefix="val"
        )
        if args.amp == "compare":
            result = amp_comparison(root, class_map, args)
        else:
            result = plain_vs_ray(root, class_map, args, scratch)
    result.update(
        config={
            **vars(args),
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
        },
        seconds=round(time.time() - started, 1),
        command="python benchmarks/train_throughput.py " + " ".join(argv or sys.argv[1:]),
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
