"""Mixed precision: which autocast dtype runs where, for training and for inference.

bf16 needs no loss scaler (its range is float32's). On CUDA it is the default from compute
capability 8.0 (Ampere) on. Older CUDA GPUs (T4, V100) have no bf16 tensor cores but fast fp16
ones, so inference runs fp16 there; training stays bf16 on every CUDA GPU, because fp16 training
would need a ``torch.amp.GradScaler`` against underflowing gradients, which unet_core.engine
does not run. On the CPU autocast pays only with native bf16 math (AVX512-BF16 or AMX):
emulated bf16 is slower than fp32, so CPUs without it stay fp32. With it, training and
prediction both autocast to bf16: measured on this project's 2-core AVX512-BF16 machine
(w16 UNet, crop 256, batch 8), bf16 trains 1.9-2.2x faster than fp32 with BatchNorm and 1.4x
with GroupNorm (``benchmarks/train_throughput.py --amp compare``).
"""

from __future__ import annotations

import contextlib
import functools

import torch

FP16_BEFORE_CAPABILITY = (8, 0)
"""CUDA compute capability from which inference autocasts to bf16; fp16 below (T4, V100)."""


@functools.cache
def cpu_supports_bf16() -> bool:
    """Native bf16 math on this CPU (AVX512-BF16 or AMX); emulated bf16 is slower than fp32."""
    if not torch.backends.mkldnn.is_available():
        return False
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


@functools.cache
def _capability_of(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def _cuda_capability(device: torch.device) -> tuple[int, int]:
    """(major, minor) of a CUDA device; "cuda" without an index is the current device."""
    return _capability_of(torch.cuda.current_device() if device.index is None else device.index)


def autocast_dtype(
    device: torch.device | str, enabled: bool | None = None, *, training: bool = False
) -> torch.dtype | None:
    """The autocast dtype for ``device``, or None for full precision.

    ``enabled`` forces autocast on or off; None = automatic: on for CUDA and for CPUs with
    native bf16. The dtype is bf16, except for inference
    (``training=False``) on CUDA GPUs of compute capability < 8.0, which get fp16. Training
    is bf16 on every CUDA GPU (fp16 would need a GradScaler, see the module docstring).
    """
    device = torch.device(device)
    if enabled is None:
        enabled = device.type == "cuda" or (device.type == "cpu" and cpu_supports_bf16())
    if not enabled:
        return None
    if device.type == "cuda" and not training and _cuda_capability(device) < FP16_BEFORE_CAPABILITY:
        return torch.float16
    return torch.bfloat16


def autocast(
    device: torch.device | str, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on the device's type; a no-op for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def autocast_context(
    device: torch.device | str, enabled: bool | None = None
) -> contextlib.AbstractContextManager:
    """Inference autocast on ``device`` (`autocast_dtype` with ``training=False``): bf16 on CUDA
    from compute capability 8.0 and on CPUs with native bf16, fp16 on older CUDA GPUs;
    ``enabled`` forces it on or off."""
    return autocast(device, autocast_dtype(device, enabled))
