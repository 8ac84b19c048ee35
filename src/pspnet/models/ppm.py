"""Pyramid pooling module (Zhao et al. 2017, Sec. 3.3, Fig. 3c).

The feature map is pooled into ``bins x bins`` sub-regions for each pyramid level (1, 2, 3, 6 in
the paper), each level is reduced by a 1x1 convolution to ``in_channels / len(bins)`` channels
(BN + ReLU), upsampled bilinearly back to the feature map's size and concatenated with it.

When training on a CPU (train mode, gradients on), the backward pass of the pooling and the
upsampling runs as a few small matrix products instead of autograd's per-level kernels: the feature
map's gradient (the concatenation's identity part plus every level's pooling gradient) is written in
one pass rather than summed from five full-size tensors, and the upsampling's gradient is read
straight from the concatenation's gradient. The forward is the same code either way (bitwise the same
output); the gradients agree to rounding. On PSPNet-18's CamVid training step this was about 20 of
500 ms (issue 16, docs/benchmarks.md). ``PSPNET_CPU_KERNELS=0`` keeps autograd's backward; so do eval
mode (inference, export), max pooling and ``torch.compile``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from . import kernels

__all__ = ["PyramidPoolingModule"]

PoolMode = Literal["avg", "max"]


class PyramidPoolingModule(nn.Module):
    """Args:
        in_channels: channels of the backbone's last feature map (2048 for ResNet-50).
        bins: pyramid levels; the output of level ``b`` has ``b x b`` bins.
        pool: "avg" (paper default, Sec. 4.2 / Table 1) or "max".
        reduction_channels: channels per level after the 1x1 conv; default ``in_channels // len(bins)``.

    Output channels: ``in_channels + len(bins) * reduction_channels`` (``2 * in_channels`` by default).
    The parameterless pooling of each branch is kept as index 0 of ``features[i]`` so the state
    dict matches the original release (``ppm.features.{i}.1`` conv, ``.2`` BN).
    """

    def __init__(self, in_channels: int, bins: Sequence[int] = (1, 2, 3, 6), *, pool: PoolMode = "avg",
                 reduction_channels: int | None = None, norm: Callable[[int], nn.Module] = nn.BatchNorm2d,
                 align_corners: bool = True) -> None:
        super().__init__()
        if not bins or any(int(b) < 1 for b in bins):
            raise ValueError(f"bins must be positive integers, got {list(bins)!r}")
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.bins, self.pool, self.align_corners = tuple(int(b) for b in bins), pool, align_corners
        reduction_channels = reduction_channels or in_channels // len(self.bins)
        pool_cls = nn.AdaptiveAvgPool2d if pool == "avg" else nn.AdaptiveMaxPool2d
        self.features = nn.ModuleList(
            nn.Sequential(pool_cls(b), nn.Conv2d(in_channels, reduction_channels, 1, bias=False),
                          norm(reduction_channels), nn.ReLU(inplace=True))
            for b in self.bins)
        self.in_channels = in_channels
        self.out_channels = in_channels + len(self.bins) * reduction_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._matrix_backward_applies(x):
            x, *pooled = _PoolLevels.apply(x, self.bins)
            levels = [branch[1:](p) for branch, p in zip(self.features, pooled)]
            return _UpsampleConcat.apply(x, self.align_corners, *levels)
        return _upsample_concat(x, [branch(x) for branch in self.features], self.align_corners)

    def _matrix_backward_applies(self, x: torch.Tensor) -> bool:
        return (self.training and self.pool == "avg" and x.requires_grad and torch.is_grad_enabled()
                and x.dim() == 4 and x.device.type == "cpu" and not torch.compiler.is_compiling() and kernels.enabled())


def _upsample_concat(x: torch.Tensor, levels: Sequence[torch.Tensor], align_corners: bool) -> torch.Tensor:
    # The upsampled 1x1 level comes back NCHW whatever x's layout, and a concatenation of mixed
    # layouts is NCHW: on a channels_last network the head's 3x3 convolution would then reorder its
    # input (twice x's width) forward and backward. Matching x's layout keeps the values as they are.
    layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    ups = [F.interpolate(level, x.shape[-2:], mode="bilinear", align_corners=align_corners).contiguous(
        memory_format=layout) for level in levels]
    return torch.cat([x, *ups], 1)


@functools.lru_cache(maxsize=16)
def _upsampling_matrices(height: int, width: int, bins: tuple[int, ...], align_corners: bool,
                         dtype: torch.dtype) -> list[torch.Tensor]:
    """Per level, bilinear upsampling from ``b x b`` to ``height x width`` as a ``[b*b, H*W]`` matrix:
    the products of ATen's 1-D weights, as its backward applies them."""
    ups, exact = [], torch.promote_types(dtype, torch.float32)  # weights as ATen computes them for this dtype
    for b in bins:
        eye = torch.eye(b, dtype=exact).view(b, 1, b, 1)
        ry = F.interpolate(eye, (height, 1), mode="bilinear", align_corners=align_corners).view(b, height)
        rx = F.interpolate(eye, (width, 1), mode="bilinear", align_corners=align_corners).view(b, width)
        ups.append(torch.kron(ry, rx).to(dtype))
    return ups


@functools.lru_cache(maxsize=16)
def _pooling_bins(height: int, width: int, bins: tuple[int, ...], dtype: torch.dtype):
    """Which pixels each adaptive-average-pooling bin of every level averages, as ATen cuts them (they may
    overlap): ``[H*W, sum b*b]`` of 0/1, and 1 / each bin's area (in float32, float64 for float64)."""
    members = []
    for b in bins:
        py = F.adaptive_avg_pool1d(torch.eye(height).view(height, 1, height), b).view(height, b).T > 0
        px = F.adaptive_avg_pool1d(torch.eye(width).view(width, 1, width), b).view(width, b).T > 0
        members.append(torch.kron(py.double(), px.double()))  # [b*b, H*W]
    member = torch.cat(members)
    exact = torch.promote_types(dtype, torch.float32)
    return member.T.to(dtype).contiguous(), (1.0 / member.sum(1)).to(exact)


def _as_rows(t: torch.Tensor) -> torch.Tensor:
    """``[N, C, H, W]`` as ``[N, H*W, C]`` (a view for channels_last tensors)."""
    n, c, h, w = t.shape
    return t.permute(0, 2, 3, 1).reshape(n, h * w, c)


class _PoolLevels(torch.autograd.Function):
    """``(x, adaptive_avg_pool2d(x, b) for b in bins)``. Backward: x's gradient from the concatenation
    (which reads ``x`` through the first output) plus every level's pooling gradient, in one product."""

    @staticmethod
    def forward(ctx, x, bins):
        ctx.bins, ctx.shape, ctx.dtype = bins, x.shape, x.dtype
        return (x.view_as(x), *(F.adaptive_avg_pool2d(x, b) for b in bins))

    @staticmethod
    def backward(ctx, grad_x, *grad_levels):
        n, c, h, w = ctx.shape
        members, inv_area = _pooling_bins(h, w, ctx.bins, ctx.dtype)
        grads = [torch.zeros(n, b * b, c, dtype=inv_area.dtype) if g is None else _as_rows(g).to(inv_area.dtype)
                 for b, g in zip(ctx.bins, grad_levels)]
        spread = (torch.cat(grads, 1) * inv_area[:, None]).to(ctx.dtype)  # each bin's gradient / its area
        rows = (torch.bmm(members.expand(n, -1, -1), spread) if grad_x is None
                else torch.baddbmm(_as_rows(grad_x).to(ctx.dtype), members.expand(n, -1, -1), spread))
        return rows.view(n, h, w, c).permute(0, 3, 1, 2), None


class _UpsampleConcat(torch.autograd.Function):
    """:func:`_upsample_concat`; backward: each level's gradient as a product with its upsampling matrix,
    read from the concatenation's gradient, whose first channels are x's (a view, no copy)."""

    @staticmethod
    def forward(ctx, x, align_corners, *levels):
        ctx.align_corners, ctx.channels = align_corners, x.shape[1]
        ctx.level_shapes = [level.shape for level in levels]
        ctx.level_dtypes = [level.dtype for level in levels]
        return _upsample_concat(x, levels, align_corners)

    @staticmethod
    def backward(ctx, grad):
        n, _, h, w = grad.shape
        bins = tuple(shape[-1] for shape in ctx.level_shapes)
        ups = _upsampling_matrices(h, w, bins, ctx.align_corners, grad.dtype)
        rows = _as_rows(grad)
        grad_levels, start = [], ctx.channels
        for up, shape, dtype in zip(ups, ctx.level_shapes, ctx.level_dtypes):
            r, b = shape[1], shape[-1]
            level = torch.matmul(up, rows[:, :, start:start + r])  # [n, b*b, r]
            grad_levels.append(level.view(n, b, b, r).permute(0, 3, 1, 2).to(dtype))
            start += r
        return grad[:, :ctx.channels], None, *grad_levels
