"""``torch.compile`` for inference, with a fallback to eager where compiling fails.

Pure PyTorch, like unet_core.model; `unet_core.predict.prepare_for_inference` applies it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

log = logging.getLogger(__name__)

__all__ = ["CompiledModel", "compile_model"]


class CompiledModel(nn.Module):
    """``torch.compile`` of a module that falls back to the module itself when compiling fails.

    Compilation happens on the first call (and again for a new input shape), so that is where
    a missing C++ compiler or an unsupported op shows. Then the call is repeated eagerly: if
    that succeeds, the compiler was at fault, a warning is logged and the eager module runs
    from then on; if it fails too, the input was at fault and its error is raised (compilation
    stays on). Parameters and ``state_dict`` are the wrapped module's, under ``module.``.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        mode: str | None = None,
        dynamic: bool | None = None,
        backend: str | Callable = "inductor",
    ) -> None:
        super().__init__()
        self.module = module
        # the bound forward, not the module: a compiled module would register its parameters twice
        self._compiled: Callable[..., torch.Tensor] | None = torch.compile(
            module.forward, mode=mode, dynamic=dynamic, backend=backend
        )

    @property
    def compiled(self) -> bool:
        """False once compilation failed and the eager module runs instead."""
        return self._compiled is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._compiled is None:
            return self.module(x)
        try:
            return self._compiled(x)
        except Exception as exc:
            out = self.module(x)  # raises when the input, not the compiler, is at fault
            log.warning(
                "torch.compile failed (%s: %s); running the model eagerly from now on. Check "
                "that a C++ compiler (gcc or clang) is installed, or predict without compile",
                type(exc).__name__,
                " ".join(str(exc).split())[:500],  # one line: the backend's error follows its name
            )
            self._compiled = None
            return out


def compile_model(
    model: nn.Module,
    *,
    mode: str | None = None,
    dynamic: bool | None = None,
    backend: str | Callable = "inductor",
) -> CompiledModel:
    """``torch.compile(model, mode=mode, dynamic=dynamic, backend=backend)``, falling back to
    eager with a warning where compiling fails (see `CompiledModel`).

    ``mode``: None (default), "reduce-overhead" (CUDA graphs) or "max-autotune". ``dynamic``:
    None compiles for the first shape and recompiles with symbolic sizes when another comes;
    False specialises on every shape (tiles of one size); True starts symbolic. ``backend``:
    "inductor" generates C++ (CPU) or Triton (CUDA) kernels; "aot_eager" only traces (a quick
    check of the graph). The first call per shape pays the compilation: on a 2-core CPU about
    a minute or more for a UNet. Compiled kernels round differently from eager ones, so a
    compiled model agrees with an eager one only to float tolerance.
    """
    return CompiledModel(model, mode=mode, dynamic=dynamic, backend=backend)
