"""Sizing policies: predictor actor pools, CPU task pools, the in-flight limit."""

from __future__ import annotations

from jobs.common.resources import ActorPool, actor_pool, in_flight_limit_mb
from jobs.inference.config import SegmentConfig


def pool(cfg: SegmentConfig, **kwargs) -> ActorPool:
    return actor_pool(
        min_actors=cfg.min_actors,
        max_actors=cfg.max_actors,
        torch_threads=cfg.torch_threads,
        **kwargs,
    )


def test_actor_pool_sizes():
    auto = SegmentConfig(input="a", output="b")
    # CPU, local Ray on 2 cores: one single-threaded actor per core
    assert pool(auto, num_gpus=0, cluster={"CPU": 4}, local_cores=2) == ActorPool(2, 2, 1)
    # CPU cluster: half the logical CPUs, one thread each
    assert pool(auto, num_gpus=0, cluster={"CPU": 64}, local_cores=None) == ActorPool(
        32, 32, 1
    )
    # GPUs: one actor per GPU share; torch threads left alone
    assert pool(auto, num_gpus=1, cluster={"CPU": 32, "GPU": 4}, local_cores=None) == (
        ActorPool(4, 4, 0)
    )
    assert pool(auto, num_gpus=0.5, cluster={"GPU": 2}, local_cores=None).max_size == 4
    # explicit flags win; threads split the local cores between the actors
    fixed = SegmentConfig(input="a", output="b", min_actors=1, max_actors=3)
    assert pool(fixed, num_gpus=0, cluster={"CPU": 4}, local_cores=8) == ActorPool(1, 3, 2)
    threads = SegmentConfig(input="a", output="b", max_actors=2, torch_threads=4)
    assert pool(threads, num_gpus=0, cluster={}, local_cores=None) == ActorPool(2, 2, 4)
    # never an empty pool
    assert pool(auto, num_gpus=0, cluster={"CPU": 1}, local_cores=None).max_size == 1


def test_in_flight_limit():
    # 12 calls of 8 images, 3 actors
    assert in_flight_limit_mb(0, image_bytes=480 * 360 * 3, rows_per_call=8, actors=3) == 143
    assert in_flight_limit_mb(0, image_bytes=10, rows_per_call=8, actors=3) == 32  # the floor
    assert in_flight_limit_mb(500, image_bytes=10, rows_per_call=8, actors=3) == 500  # the flag
