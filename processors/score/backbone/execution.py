"""Backbone execution: the same maths as the plain timm model, faster.

Both transforms are checked against the plain model in the tests:
  - TF "same" padding is asymmetric at stride 2 (``timm``'s ``Conv2dSame`` pads every call, about
    30% of the runtime here). When every stride-2 input is even (``image_size % 32 == 0``),
    TF-padded network on ``x`` == symmetric-padded network with spatially flipped kernels on
    ``flip(x)``: flipping both axes turns the (low, high) padding into (high, low), symmetric
    padding of the high side gives the same output size, and pointwise layers, BatchNorm and the
    global pool commute with the flip. So ``tf_efficientnet_liteN`` runs as timm
    ``efficientnet_liteN`` with flipped kernels, BN eps 1e-3 and inputs flipped in
    :meth:`processors.score.backbone.model.Backbone.forward`.
  - For timm EfficientNets, each BatchNorm (eval statistics) is folded into the convolution
    before it; a BatchNorm-with-activation keeps only its activation.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import torch

__all__ = ["TF_BN_EPS", "TF_LITE", "flip_kernels", "fold_batchnorm", "symmetric_twin_of_tf_lite"]

TF_BN_EPS = 1e-3
TF_LITE = re.compile(r"tf_efficientnet_lite\d")


def fold_batchnorm(model: torch.nn.Module) -> int:
    """Fold eval-mode BatchNorms into the convolutions before them, in place; returns how many.

    Only for modules whose forward runs each child ``Conv2d`` straight into the next child
    ``BatchNorm2d`` (timm EfficientNet / MobileNet blocks and stems); the caller checks that. A
    ``BatchNormAct2d`` becomes its dropout + activation, a plain ``BatchNorm2d`` an ``Identity``.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    folded = 0
    for parent in list(model.modules()):
        names = list(parent._modules)
        for first, second in itertools.pairwise(names):
            conv, norm = parent._modules[first], parent._modules[second]
            if not (
                isinstance(conv, torch.nn.Conv2d)
                and type(norm).__name__ in ("BatchNorm2d", "BatchNormAct2d")
                and isinstance(norm, torch.nn.BatchNorm2d)
                and norm.running_mean is not None
                and norm.running_var is not None
            ):
                continue
            weight, bias = fuse_conv_bn_weights(
                conv.weight,
                conv.bias,
                norm.running_mean,
                norm.running_var,
                norm.eps,
                norm.weight,
                norm.bias,
            )
            conv.weight, conv.bias = weight, bias
            act = getattr(norm, "act", None)
            drop = getattr(norm, "drop", None)
            tail = [
                m for m in (drop, act) if m is not None and not isinstance(m, torch.nn.Identity)
            ]
            parent._modules[second] = torch.nn.Sequential(*tail) if tail else torch.nn.Identity()
            folded += 1
    return folded


def symmetric_twin_of_tf_lite(timm: Any, architecture: str, num_classes: int) -> torch.nn.Module:
    """timm ``efficientnet_liteN`` set up to compute ``tf_efficientnet_liteN`` on flipped inputs.

    Takes the TF model's state dict keys (they are identical); call :func:`flip_kernels` after
    loading weights. See the module docstring for why this is exact.
    """
    model = timm.create_model(architecture[len("tf_") :], pretrained=False, num_classes=num_classes)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eps = TF_BN_EPS
    model.pretrained_cfg = timm.models.get_pretrained_cfg(architecture).to_dict()
    return model


def flip_kernels(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d) and max(module.kernel_size) > 1:
                module.weight.copy_(module.weight.flip(-1, -2))
