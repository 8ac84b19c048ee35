"""Pyramid pooling module (Zhao et al. 2017, Sec. 3.3, Fig. 3c).

The feature map is pooled into ``bins x bins`` sub-regions for each pyramid level (1, 2, 3, 6 in
the paper), each level is reduced by a 1x1 convolution to ``in_channels / len(bins)`` channels
(BN + ReLU), upsampled bilinearly back to the feature map's size and concatenated with it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

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
        size = x.shape[-2:]
        # The upsampled 1x1 level comes back NCHW whatever x's layout, and a concatenation of mixed
        # layouts is NCHW: on a channels_last network the head's 3x3 convolution would then reorder its
        # input (twice x's width) forward and backward. Matching x's layout keeps the values as they are.
        layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        out = [x]
        for branch in self.features:
            level = F.interpolate(branch(x), size, mode="bilinear", align_corners=self.align_corners)
            out.append(level.contiguous(memory_format=layout))
        return torch.cat(out, 1)
