"""Sizing policies: predictor actor pools, CPU task pools, training workers, the in-flight
limit, on local Rays, fixed clusters and autoscaling ones."""

from __future__ import annotations

from jobs.common.cluster_info import UNBOUNDED_POOL, ClusterView
from jobs.common.resources import (
    ActorPool,
    actor_pool,
    cpu_tasks,
    cpus_per_train_worker,
    in_flight_limit_mb,
)
from jobs.inference.config import SegmentConfig
from jobs.inference.session import choose_predictor_actors


def local(cpus: float, cores: int) -> ClusterView:
    return ClusterView(local=True, nodes=1, resources={"CPU": cpus}, local_cores=cores)


def fixed(**resources: float) -> ClusterView:
    return ClusterView(local=False, nodes=3, resources=resources)


def autoscaling(max_resources: dict | None = None, **resources: float) -> ClusterView:
    return ClusterView(
        local=False, nodes=1, resources=resources, autoscaler="v1", max_resources=max_resources
    )


def pool(cfg: SegmentConfig, **kwargs) -> ActorPool:
    return actor_pool(
        min_actors=cfg.worker_range[0],
        max_actors=cfg.worker_range[1],
        torch_threads=cfg.torch_threads,
        **kwargs,
    )


def test_actor_pool_sizes():
    auto = SegmentConfig(input="a", output="b")
    # CPU, local Ray on 2 cores: one single-threaded actor per core, the whole pool at once
    assert pool(auto, num_gpus=0, view=local(4, 2)) == ActorPool(2, 2, 1)
    # CPU cluster of fixed size: half the logical CPUs, one thread each
    assert pool(auto, num_gpus=0, view=fixed(CPU=64)) == ActorPool(32, 32, 1)
    # ... all of them when the actors decode and write themselves (fused), by their CPUs
    assert pool(auto, num_gpus=0, view=fixed(CPU=64), fused=True) == ActorPool(64, 64, 1)
    assert pool(auto, num_gpus=0, view=fixed(CPU=64), fused=True, cpus_per_actor=2).max_size == 32
    assert pool(auto, num_gpus=0, view=local(4, 2), fused=True) == ActorPool(2, 2, 1)
    # GPUs: one actor per GPU share; torch threads left alone
    assert pool(auto, num_gpus=1, view=fixed(CPU=32, GPU=4)) == ActorPool(4, 4, 0)
    assert pool(auto, num_gpus=0.5, view=fixed(GPU=2)).max_size == 4
    # explicit flags win; threads split the local cores between the actors
    flags = SegmentConfig(input="a", output="b", num_workers="1-3")
    assert pool(flags, num_gpus=0, view=local(4, 8)) == ActorPool(1, 3, 2)
    threads = SegmentConfig(input="a", output="b", num_workers="0-2", torch_threads=4)
    assert pool(threads, num_gpus=0, view=fixed()) == ActorPool(2, 2, 4)
    # never an empty pool
    assert pool(auto, num_gpus=0, view=fixed(CPU=1)).max_size == 1


def test_cpu_actors_take_the_fused_path_unless_told_otherwise():
    def fused(view: ClusterView, **flags) -> bool:
        return choose_predictor_actors(SegmentConfig(input="a", output="b", **flags), view).fused

    assert fused(local(4, 2), device="cpu") is True
    assert fused(fixed(CPU=64), device="cpu") is True
    assert fused(fixed(CPU=64, GPU=4)) is False  # GPU actors: CPU tasks feed them
    assert fused(local(4, 2), device="cpu", fused=False) is False
    assert fused(fixed(CPU=64, GPU=4), fused=True) is True


def test_actor_pool_grows_with_an_autoscaling_cluster():
    auto = SegmentConfig(input="a", output="b")
    # GPU workers at zero now: start with one actor, grow to what the cluster can launch
    assert pool(auto, num_gpus=1, view=autoscaling({"GPU": 8, "CPU": 64})) == ActorPool(1, 8, 0)
    # the autoscaler does not publish its maximum: a bounded pool that still grows
    assert pool(auto, num_gpus=1, view=autoscaling()) == ActorPool(1, UNBOUNDED_POOL, 0)
    assert pool(auto, num_gpus=0, view=autoscaling(CPU=4)).max_size == UNBOUNDED_POOL
    # more GPUs now than the published maximum (a stale config): what is there counts
    assert pool(auto, num_gpus=1, view=autoscaling({"GPU": 1}, GPU=2)).max_size == 2


def test_cpu_task_pools_are_pinned_only_on_a_local_ray():
    assert cpu_tasks(0, rows=1000, batch_size=8, view=local(8, 4)) == 2
    assert cpu_tasks(0, rows=8, batch_size=8, view=local(8, 4)) == 1  # no more than batches
    assert cpu_tasks(0, rows=1000, batch_size=8, view=autoscaling(CPU=0)) is None
    assert cpu_tasks(0, rows=1000, batch_size=8, view=fixed(CPU=64)) is None
    assert cpu_tasks(3, rows=1000, batch_size=8, view=fixed(CPU=64)) == 3  # the flag


def test_training_workers_cpus():
    assert cpus_per_train_worker(local(4, 2), num_workers=2) == 1.0
    assert cpus_per_train_worker(local(2, 2), num_workers=2) == 0.5
    assert cpus_per_train_worker(local(1, 1), num_workers=2) == 0.1
    # a cluster's head may offer no CPUs now: workers still reserve a whole CPU on their nodes
    assert cpus_per_train_worker(autoscaling(CPU=0), num_workers=8) == 1.0


def test_in_flight_limit():
    # 12 calls of 8 images, 3 actors
    assert in_flight_limit_mb(0, image_bytes=480 * 360 * 3, rows_per_call=8, actors=3) == 143
    assert in_flight_limit_mb(0, image_bytes=10, rows_per_call=8, actors=3) == 32  # the floor
    assert in_flight_limit_mb(500, image_bytes=10, rows_per_call=8, actors=3) == 500  # the flag


def test_blocks_hold_many_small_images_and_few_large_ones():
    from jobs.common.resources import MAX_BLOCK_ROWS, rows_per_block

    tiny, camvid, huge = 16 * 16 * 3, 480 * 360 * 3, 8000 * 8000 * 3
    assert (
        rows_per_block(rows=10**7, rows_per_call=8, image_bytes=tiny, actors=16) == MAX_BLOCK_ROWS
    )
    assert rows_per_block(rows=10**7, rows_per_call=8, image_bytes=camvid, actors=16) == 128
    assert rows_per_block(rows=10**7, rows_per_call=8, image_bytes=huge, actors=16) == 8
    # A short input is spread over the actors (16 blocks each); a block is whole calls.
    assert rows_per_block(rows=40, rows_per_call=8, image_bytes=tiny, actors=2) == 8
    assert rows_per_block(rows=1000, rows_per_call=16, image_bytes=tiny, actors=2) == 32
    assert (
        in_flight_limit_mb(0, image_bytes=camvid, rows_per_call=8, actors=2, rows_per_block=128)
        == 380
    )  # three blocks per actor
