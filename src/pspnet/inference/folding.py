"""BatchNorm folding: every eval-mode BatchNorm merged into the convolution before it.

In eval mode a BatchNorm is a per-channel affine map with its running statistics (Ioffe & Szegedy
2015, Sec. 3), so ``bn(conv(x))`` is one convolution with rescaled weights and a new bias. Every
BN of PSPNet follows a convolution: the ResNet blocks (Sec. 3.2), the pyramid pooling branches
(Sec. 3.3) and the classifier head (Fig. 2(d)). The folded network computes the same function up
to fp32 rounding and saves one pass over every feature map; it is the first step of every fast
path (:mod:`pspnet.inference.prepare`). GroupNorm depends on the input and does not fold.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from ..errors import PSPNetError
from ..models.resnet import BasicBlock, Bottleneck, ResNet

log = logging.getLogger("pspnet.fast")

__all__ = ["fuse_conv_bn", "fold_batchnorm"]

_BN = nn.modules.batchnorm._BatchNorm


@torch.no_grad()
def fuse_conv_bn(conv: nn.Conv2d, bn: nn.Module) -> nn.Conv2d:
    """A new convolution computing ``bn(conv(x))`` with eval-mode (running) statistics.

    ``w' = w * g / sqrt(v + eps)`` and ``b' = (b - m) * g / sqrt(v + eps) + beta``, computed in
    float64 so the folded layer is as close to the original as fp32 allows.
    """
    if not isinstance(bn, _BN) or bn.running_mean is None or bn.running_var is None:
        raise PSPNetError(f"cannot fold {type(bn).__name__} into a convolution: only BatchNorm with running "
                          f"statistics folds (GroupNorm depends on the input)")
    if bn.num_features != conv.out_channels:
        raise PSPNetError(f"BatchNorm has {bn.num_features} channels but the convolution before it has "
                          f"{conv.out_channels}")
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
                      device=conv.weight.device, dtype=conv.weight.dtype)
    w = conv.weight.double()
    b = conv.bias.double() if conv.bias is not None else torch.zeros_like(bn.running_mean, dtype=torch.float64)
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(b)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(b)
    scale = gamma / torch.sqrt(bn.running_var.double() + bn.eps)
    fused.weight.copy_((w * scale.view(-1, 1, 1, 1)).to(conv.weight.dtype))
    fused.bias.copy_(((b - bn.running_mean.double()) * scale + beta).to(conv.weight.dtype))
    return fused


# attribute pairs (conv, bn) that a module's forward applies back to back
_NAMED_PAIRS: dict[type, tuple[tuple[str, str], ...]] = {
    BasicBlock: (("conv1", "bn1"), ("conv2", "bn2")),
    Bottleneck: (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
    ResNet: (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
}


def _fold_into(module: nn.Module) -> int:
    folded = 0
    if isinstance(module, nn.Sequential):
        keys = list(module._modules)
        for a, b in zip(keys, keys[1:]):
            conv, bn = module._modules[a], module._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, _BN):
                module._modules[a] = fuse_conv_bn(conv, bn)
                module._modules[b] = nn.Identity()
                folded += 1
    for cls, pairs in _NAMED_PAIRS.items():
        if isinstance(module, cls):
            for conv_name, bn_name in pairs:
                conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
                if isinstance(conv, nn.Conv2d) and isinstance(bn, _BN):
                    setattr(module, conv_name, fuse_conv_bn(conv, bn))
                    setattr(module, bn_name, nn.Identity())
                    folded += 1
    for child in module.children():
        folded += _fold_into(child)
    return folded


def fold_batchnorm(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold every BatchNorm that directly follows a convolution into it (eval-mode semantics).

    Returns a copy in eval mode (or ``model`` itself with ``inplace=True``); Dropout becomes
    Identity (it is one in eval mode). BatchNorms that follow no convolution are left as they are.
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    n = _fold_into(model)
    for m in list(model.modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, (nn.Dropout, nn.Dropout2d)):
                setattr(m, child_name, nn.Identity())
    left = sum(isinstance(m, _BN) for m in model.modules())
    log.debug("folded %d BatchNorm layers into convolutions (%d left)", n, left)
    return model

