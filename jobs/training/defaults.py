"""What a training run takes from the machine when the flags leave it open: the cache folder,
the generated demo data set, a run name, checkpoint storage and the S3 endpoint."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from jobs.common import fs
from jobs.training.config import TrainJobConfig

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """$UNET_RAY_CACHE, else ~/.cache/unet-ray: demo data and the default checkpoint storage."""
    return Path(
        os.environ.get("UNET_RAY_CACHE") or Path.home() / ".cache" / "unet-ray"
    ).expanduser()


def demo_data_root(
    cache_dir: Path, *, num_images: int, size: int, seed: int = 0, make: bool = True
) -> str:
    """The generated demo set under the cache folder, made once (atomically) and reused;
    ``make=False`` only names it (a dry run writes nothing)."""
    from unet_core.synthetic import make_synthetic_dataset

    root = cache_dir / "demo-data" / f"n{num_images}-s{size}-seed{seed}"
    if (root / "classes.json").is_file() or not make:
        return str(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=root.parent, prefix=".tmp-"))
    try:
        make_synthetic_dataset(scratch, num_images=num_images, size=size, seed=seed)
        try:
            os.replace(scratch, root)
        except OSError:  # another job made it first
            if not (root / "classes.json").is_file():
                raise
        log.info(
            "generated the demo data set: %d images of %dx%d in %s", num_images, size, size, root
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return str(root)


def with_defaults(cfg: TrainJobConfig) -> TrainJobConfig:
    """Fill what depends on the machine: demo data (generated unless --dry-run), run name,
    storage, S3 endpoint."""
    cache = default_cache_dir()
    data = cfg.data or demo_data_root(
        cache,
        num_images=cfg.demo_images,
        size=cfg.demo_size,
        seed=cfg.train.seed,
        make=not cfg.dry_run,
    )
    return dataclasses.replace(
        cfg,
        data=data,
        run_name=cfg.run_name or time.strftime("unet-%Y%m%d-%H%M%S"),
        storage_path=fs.absolute(cfg.storage_path or cache / "runs"),
        s3_endpoint_url=fs.s3_endpoint(cfg.s3_endpoint_url),
    )
