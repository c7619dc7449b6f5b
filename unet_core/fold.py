"""BatchNorm folding: an eval-mode BatchNorm after a convolution is an affine map per channel, so
it can be merged into that convolution's weight and bias, one layer less per block at inference.

Pure PyTorch, like unet_core.model: no device placement here (see unet_core.predict).
"""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["fold_batchnorm"]


def _foldable(conv: nn.Module, norm: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and type(norm) is nn.BatchNorm2d
        and norm.track_running_stats
        and norm.running_mean is not None
        and norm.running_var is not None
        and conv.out_channels == norm.num_features
    )


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` whose Conv2d -> BatchNorm2d pairs are single convolutions.

    Only pairs that are neighbours in an ``nn.Sequential`` are folded (there the order of the
    children is the order of execution; `unet_core.model.DoubleConv` is one). The BatchNorm
    becomes an ``nn.Identity``, so the indices and parameter names of the convolutions stay those
    of the original (``stem.0.weight``), and the folded conv gains a bias. Anything else
    (GroupNorm, Identity, BatchNorm without running statistics) is copied as it is. The result
    computes what ``model.eval()`` computes, up to float rounding; ``model`` itself is not
    changed (its mode, weights and ``state_dict`` stay as they were), so it can still be trained
    or saved as a checkpoint.
    """
    folded = copy.deepcopy(model).eval()
    for module in list(folded.modules()):  # a list: the loop replaces children
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:], strict=False):
            conv, norm = module._modules[first], module._modules[second]
            if _foldable(conv, norm):
                # weight * (gamma / sqrt(var + eps)) per output channel; the layout is kept
                module._modules[first] = fuse_conv_bn_eval(conv, norm)
                module._modules[second] = nn.Identity()
    return folded
