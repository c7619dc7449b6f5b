"""The device a Ray worker was given: a GPU that Ray scheduled must be a usable CUDA device.

A node can declare GPUs that torch cannot use (a missing or broken driver, a CPU-only torch
build in the image, or a simulated node): work scheduled there must fail at once, saying so,
not hang or quietly run on the CPU.
"""

from __future__ import annotations


class NoCudaError(RuntimeError):
    """Ray gave this process a GPU, but torch sees no CUDA device."""


def require_cuda(what: str) -> None:
    """Raise `NoCudaError` naming the node and the fix unless CUDA is usable here."""
    import torch

    if torch.cuda.is_available():
        return
    node, gpus = "?", []
    try:
        import ray

        context = ray.get_runtime_context()
        node, gpus = context.get_node_id(), ray.get_gpu_ids()
    except Exception:  # noqa: BLE001 - outside Ray: the message still holds
        pass
    raise NoCudaError(
        f"{what} was scheduled on node {node} with GPU(s) {gpus}, but the node has no usable "
        f"CUDA device (torch {torch.__version__}, torch.cuda.is_available() is False): fix the "
        "node's GPU driver or image, or run on CPU (--no-gpu / --num-gpus-per-actor 0)"
    )
