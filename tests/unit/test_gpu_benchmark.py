"""benchmarks/gpu_benchmark.py: refuses to run without CUDA, and its model part runs on the CPU
(--smoke-cpu) with the keys a GPU run writes. The job parts (segment, train) start Ray:
tests/integration/test_gpu_benchmark_smoke.py runs them."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from benchmarks import gpu_benchmark
from unet_core.config import ModelConfig

RATE_KEYS = {"images_per_second", "gflops_per_image", "achieved_tflops", "mfu", "batch_size"}


def test_refuses_without_cuda(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "result.json"
    assert gpu_benchmark.main(["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device" in err and "run it on a GPU node" in err and "--smoke-cpu" in err
    assert not out.exists()


def test_smoke_model_part_writes_the_json(tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "smoke.json"
    assert gpu_benchmark.main(["--smoke-cpu", "--parts", "model", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == result
    assert result["smoke_cpu"] is True
    assert result["segment"] is None and result["train"] is None
    assert {"device", "device_name", "peak_tflops", "torch"} <= set(result["environment"])
    (inference,) = result["model"]["inference"]  # w8 at 64x64
    (training,) = result["model"]["training"]
    for entry in (inference, training):
        assert set(entry) >= RATE_KEYS, entry
        assert entry["images_per_second"] > 0 and entry["mfu"] is None  # no CPU peak
    assert inference["width"] == 8 and inference["size"] == 64
    assert training["gflops_per_image"] > 2 * inference["gflops_per_image"]  # + backward


def test_rates_are_the_images_given_over_the_timed_seconds(monkeypatch):
    """With a clock that advances 0.25 s per reading, each rate is exactly the images of the
    timed passes (batch x iterations, warm-up excluded) over 0.25 s, and the TFLOP/s are that
    rate times the FLOPs of one image; MFU is achieved over the device's peak."""
    torch.set_num_threads(1)
    ticks = itertools.count()
    monkeypatch.setattr(gpu_benchmark.time, "perf_counter", lambda: next(ticks) * 0.25)
    cpu = torch.device("cpu")
    common = dict(width=4, depth=2, size=32, batch=2, warmup=2, peak=100.0)
    config = gpu_benchmark.model_config(4, 2)
    for entry, flops in (
        (
            gpu_benchmark.forward_throughput(cpu, iters=3, **common),
            gpu_benchmark.flops_per_image(config, 32),
        ),
        (
            gpu_benchmark.train_throughput(cpu, steps=3, **common),
            gpu_benchmark.flops_per_image(config, 32, backward=True),
        ),
    ):
        assert entry["images_per_second"] == 2 * 3 / 0.25, entry  # 6 images in one tick
        assert entry["gflops_per_image"] == round(flops / 1e9, 3)
        assert entry["achieved_tflops"] == round(24.0 * flops / 1e12, 3)
        assert entry["mfu"] == round(24.0 * flops / 1e12 / 100.0, 4)
        assert (entry["width"], entry["size"], entry["batch_size"]) == (4, 32, 2)


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA GH200 480GB", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A10G", 70.0),
        ("NVIDIA A10", 125.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA L40S", 362.0),
        ("Tesla T4", 65.0),
        ("Tesla V100-SXM2-16GB", 125.0),
        ("Tesla V100-PCIE-32GB", 112.0),
        ("NVIDIA GeForce RTX 4090", 165.0),
        ("NVIDIA RTX A6000", None),  # not in the table: MFU null
    ],
)
def test_peak_table(name, peak):
    assert gpu_benchmark.peak_tflops(name)[0] == peak


def test_forward_flops_scale_with_pixels():
    config = ModelConfig(in_channels=3, num_classes=2, base_width=4, depth=2)
    small = gpu_benchmark.flops_per_image(config, 32)
    assert small > 0
    assert gpu_benchmark.flops_per_image(config, 64) == 4 * small
