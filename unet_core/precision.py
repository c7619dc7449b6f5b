"""Mixed precision: where bf16 autocast runs, for training and for inference alike.

bf16 needs no loss scaler (its range is float32's). On CUDA it is always on by default. On the
CPU it pays only with native bf16 math (AVX512-BF16 or AMX): emulated bf16 is slower than fp32.
Training on the CPU stays fp32 by default (its backward pass gains little); prediction uses
bf16 there when the CPU has it.
"""

from __future__ import annotations

import contextlib
import functools

import torch


@functools.cache
def cpu_supports_bf16() -> bool:
    """Native bf16 math on this CPU (AVX512-BF16 or AMX); emulated bf16 is slower than fp32."""
    if not torch.backends.mkldnn.is_available():
        return False
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def autocast_dtype(
    device: torch.device | str, enabled: bool | None = None, *, training: bool = False
) -> torch.dtype | None:
    """torch.bfloat16, or None for full precision. ``enabled`` forces it on or off; None =
    automatic: CUDA, and (unless ``training``) CPUs with native bf16."""
    device = torch.device(device)
    if enabled is None:
        enabled = device.type == "cuda" or (
            device.type == "cpu" and not training and cpu_supports_bf16()
        )
    return torch.bfloat16 if enabled else None


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
    """Inference autocast: bf16 on CUDA and on CPUs with native bf16; ``enabled`` forces it."""
    return autocast(device, autocast_dtype(device, enabled))
