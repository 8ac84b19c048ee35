"""oneDNN fused convolutions for the folded network on CPUs: conv + bias (+ residual add) (+ ReLU)
as one primitive with weights packed once per input shape.

This is what PyTorch's inductor does with ``freezing`` (``torch/_inductor/fx_passes/mkldnn_fusion.py``:
``mkldnn._convolution_pointwise`` with the weight reordered by ``mkldnn_reorder_conv2d_weight``),
done in eager mode without compiling: after BatchNorm folding (:mod:`pspnet.inference.folding`)
every convolution of PSPNet is followed by nothing, a ReLU, or (the last one of a ResNet block,
He et al. 2016) the shortcut addition and a ReLU, so each becomes one oneDNN call and the
activations make one pass through memory instead of three.
"""

from __future__ import annotations

import torch
from torch import nn

from ..cpu import onednn_available
from ..errors import ConfigError, PSPNetError
from ..models.resnet import BasicBlock, Bottleneck

__all__ = ["OneDNNConv", "FusedBlock", "fuse_sequential", "fusable", "resolve_onednn"]


class OneDNNConv(nn.Module):
    """A (BN-folded) convolution with its bias, an optional residual addition and an optional ReLU
    as one oneDNN primitive, its weight re-laid out once per input shape for the kernel oneDNN picks
    for that shape (what inductor's ``freezing`` does) instead of on every call. The packing needs
    the input shape: packed without it, oneDNN can fall back to a far slower kernel (measured 15x
    on a 1x1 convolution), so packed weights are cached per input shape (a few entries)."""

    max_cached_shapes = 4

    def __init__(self, conv: nn.Conv2d, dtype: torch.dtype, relu: bool = False) -> None:
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise PSPNetError("OneDNNConv supports zero padding given as integers")
        self.padding, self.stride = list(conv.padding), list(conv.stride)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.attr = "relu" if relu else "none"
        self.weight = nn.Parameter(conv.weight.detach().to(dtype), requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().to(dtype), requires_grad=False)
        # opaque oneDNN tensors, kept out of state_dict / module.to()
        self._packed: dict[tuple[int, ...], torch.Tensor] = {}

    def packed_weight(self, shape: tuple[int, ...]) -> torch.Tensor:
        w = self._packed.get(shape)
        if w is None:
            if len(self._packed) >= self.max_cached_shapes:
                self._packed.pop(next(iter(self._packed)))
            w = torch._C._nn.mkldnn_reorder_conv2d_weight(self.weight.to_mkldnn(), self.padding, self.stride,
                                                          self.dilation, self.groups, list(shape))
            self._packed[shape] = w
        return w

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        w = self.packed_weight(tuple(x.shape))
        if residual is None:
            return torch.ops.mkldnn._convolution_pointwise(x, w, self.bias, self.padding, self.stride,
                                                           self.dilation, self.groups, self.attr, [], "")
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, residual, w, self.bias, self.padding, self.stride, self.dilation, self.groups,
            "add", None, self.attr, [], "")


class FusedBlock(nn.Module):
    """A folded BasicBlock / Bottleneck: every conv+ReLU fused, the last conv fused with the
    shortcut addition and the final ReLU."""

    def __init__(self, block: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        names = ["conv1", "conv2"] + (["conv3"] if isinstance(block, Bottleneck) else [])
        self.convs = nn.ModuleList(OneDNNConv(getattr(block, n), dtype, relu=True) for n in names)
        self.down = None
        if block.downsample is not None:
            self.down = OneDNNConv(block.downsample[0], dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.down is None else self.down(x)
        out = x
        for conv in self.convs[:-1]:
            out = conv(out)
        return self.convs[-1](out, identity)


def fuse_sequential(seq: nn.Sequential, dtype: torch.dtype) -> nn.Sequential:
    """Conv (Identity*) ReLU -> one fused OneDNNConv; ResNet blocks -> :class:`FusedBlock`; Identity
    layers (folded BatchNorms, eval-mode Dropout) dropped; the rest kept."""
    items = [m for m in seq if not isinstance(m, nn.Identity)]
    out, i = [], 0
    while i < len(items):
        m = items[i]
        if isinstance(m, nn.Conv2d):
            relu = i + 1 < len(items) and isinstance(items[i + 1], nn.ReLU)
            out.append(OneDNNConv(m, dtype, relu=relu))
            i += 2 if relu else 1
        elif isinstance(m, (BasicBlock, Bottleneck)):
            out.append(FusedBlock(m, dtype))
            i += 1
        else:
            out.append(m)
            i += 1
    return nn.Sequential(*out)


def fusable(model: nn.Module) -> bool:
    """Every norm layer was folded (a GroupNorm model keeps the plain modules)."""
    norms = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
    return not any(isinstance(m, norms) for m in model.modules())


def resolve_onednn(onednn: bool | None, device: torch.device, model: nn.Module) -> bool:
    """Whether to fuse ``model`` (folded): ``None`` picks it where PyTorch has oneDNN on ``device`` and
    every norm is folded; ``True`` where that does not hold is an error, not a silent fallback."""
    possible = onednn_available(device) and fusable(model)
    if onednn and not possible:
        raise ConfigError("onednn=True needs a CPU build of PyTorch with mkldnn and a BatchNorm model "
                          "(every norm folded)")
    return possible if onednn is None else bool(onednn)
