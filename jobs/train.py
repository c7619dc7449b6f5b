"""Train a UNet with Ray Train on data from a folder or S3; track and register it in MLflow.

    python jobs/train.py                                    # demo: generated data, local Ray
    python jobs/train.py --data s3://bucket/set --num-workers 4 --use-gpu
    ray job submit --working-dir . -- python jobs/train.py --data s3://bucket/set

Steps: check the data on the driver (exit 2 naming the bad files), start or resume the MLflow
run, train with TorchTrainer (jobs/worker_loop.py), then log curves and a validation panel,
register the best checkpoint and gate the alias. The last stdout line is a JSON summary.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/train.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from jobs import datasets, fs, ray_setup, registry, tracking
from jobs.train_config import TrainJobConfig, default_cache_dir, parse_args
from jobs.validation import DataPlan, DataValidationError, check_with_ray, plan_data
from jobs.worker_loop import make_loop_config, train_loop_per_worker

log = logging.getLogger("unet_ray.train")


def with_defaults(cfg: TrainJobConfig) -> TrainJobConfig:
    """Fill what depends on the machine: demo data, run name, storage, S3 endpoint."""
    cache = default_cache_dir()
    data = cfg.data or datasets.demo_data_root(
        cache, num_images=cfg.demo_images, size=cfg.demo_size, seed=cfg.train.seed
    )
    endpoint = (
        cfg.s3_endpoint_url
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
    )
    return dataclasses.replace(
        cfg,
        data=data,
        run_name=cfg.run_name or time.strftime("unet-%Y%m%d-%H%M%S"),
        storage_path=fs.absolute(cfg.storage_path or cache / "runs"),
        s3_endpoint_url=endpoint,
    )


def make_trainer(
    cfg: TrainJobConfig, plan: DataPlan, loop_config: dict, owned: bool
) -> TorchTrainer:
    """TorchTrainer over the planned data; storage, failures and checkpoints from the config."""
    use_gpu, resources = ray_setup.worker_resources(
        cfg.num_workers, use_gpu=cfg.use_gpu, cpus_per_worker=cfg.cpus_per_worker
    )
    built = datasets.build_train_val(
        plan,
        seed=cfg.train.seed,
        endpoint_url=cfg.s3_endpoint_url,
        cache=cfg.cache_data,
        ray_remote_args={} if owned else ray_setup.data_remote_args(),
    )
    filesystem, storage = fs.resolve(cfg.storage_path, endpoint_url=cfg.s3_endpoint_url)
    loop_config.update(use_gpu=use_gpu, resources_per_worker=resources)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=cfg.run_name,
            storage_path=storage,
            storage_filesystem=filesystem if fs.is_remote(cfg.storage_path) else None,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.keep_checkpoints,
                checkpoint_score_attribute="val_miou",
                checkpoint_score_order="max",
            ),
            worker_runtime_env={} if owned else {"env_vars": ray_setup.forwarded_env()},
            logging_config=LoggingConfig(
                log_level="DEBUG" if cfg.log_level == "DEBUG" else "WARNING"
            ),
        ),
        datasets=built,
        dataset_config=datasets.ExactValidationDataConfig(),
    )


def run(cfg: TrainJobConfig) -> dict:
    started = time.time()
    plan, unchecked = plan_data(
        cfg.data,
        val_data=cfg.val_data,
        class_map_path=cfg.class_map,
        val_fraction=cfg.train.val_fraction,
        seed=cfg.train.seed,
        in_channels=cfg.in_channels,
        num_workers=cfg.num_workers,
        check_limit=cfg.check_limit,
        endpoint_url=cfg.s3_endpoint_url,
    )
    owned = ray_setup.init_ray(cfg.ray_address)
    ray_setup.quiet_ray_logs(cfg.log_level)
    try:
        if unchecked and cfg.full_check:
            check_with_ray(plan, unchecked, endpoint_url=cfg.s3_endpoint_url)
        uri = tracking.resolve_tracking_uri(cfg.tracking_uri)
        handle = tracking.start_or_resume_run(
            tracking_uri=uri,
            experiment=cfg.experiment,
            run_name=cfg.run_name,
            tags={"data_root": plan.root, "storage_path": cfg.storage_path},
        )
        loop_config = make_loop_config(cfg, plan, tracking_uri=uri, run_id=handle.run_id)
        trainer = make_trainer(cfg, plan, loop_config, owned)
        tracking.log_run_inputs(
            uri,
            handle.run_id,
            params=tracking.run_params(cfg.to_flat(), loop_config),
            artifacts={"config.json": loop_config, "split.json": tracking.split_record(plan)},
        )
        try:
            result = trainer.fit()
        except Exception:
            tracking.finish_run(uri, handle.run_id, "FAILED")
            raise
        with tempfile.TemporaryDirectory() as scratch:
            summary = registry.publish(cfg, plan, result, uri, handle.run_id, Path(scratch))
        summary["elapsed_seconds"] = round(time.time() - started, 1)
        return summary
    finally:
        if owned:
            ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a bad flag (2, message printed)
        return int(exc.code or 0)
    logging.basicConfig(
        level=cfg.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        summary = run(with_defaults(cfg))
    except DataValidationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the reason on stderr; the traceback only with --log-level DEBUG
        log.debug("training failed", exc_info=True)
        print(f"error: training failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
