"""The device a Ray worker was given: a GPU that Ray scheduled must be a usable CUDA device.

A node can declare GPUs that torch cannot use (a missing or broken driver, a CPU-only torch
build in the image, or a simulated node): work scheduled there must fail at once, saying so,
not hang or quietly run on the CPU.
"""

from __future__ import annotations


class NoCudaError(RuntimeError):
    """Ray gave this process a GPU, but torch sees no CUDA device."""

    exit_kind = "device"  # a job ends with exit code 2 (jobs.common.exits)


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
        "node's GPU driver or image, or run on CPU (--device cpu)"
    )


def check_gpu_node(view, *, what: str, timeout: float) -> None:
    """Before a stage that wants GPUs starts (Ray Train sets up NCCL before any code of ours
    runs on a worker): run one GPU task and make sure it sees CUDA. Fails at once when the
    cluster has no GPUs and no autoscaler, and after ``timeout`` s when no GPU node comes up."""
    import ray

    if view.gpus_now == 0 and not view.autoscaler:
        raise NoCudaError(
            f"{what} asked for GPUs, but the Ray cluster has none and no autoscaler to add "
            "them: run on CPU (--device cpu) or add GPU nodes"
        )
    probe = ray.remote(num_gpus=1, num_cpus=0, max_retries=0)(_probe)
    ref = probe.options(name=f"unet-gpu-check ({what})").remote(what)
    try:
        ray.get(ref, timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        ray.cancel(ref, force=True)
        raise NoCudaError(
            f"{what} asked for GPUs, but no GPU node came up within {timeout:.0f} s: check "
            "`ray status` for failed launches and the GPU node type's max_workers"
        ) from None
    except ray.exceptions.RayTaskError as exc:
        raise exc.as_instanceof_cause() from None


def _probe(what: str) -> None:
    require_cuda(what)
