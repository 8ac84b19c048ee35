"""Spatial pyramid pooling (He et al., "Spatial Pyramid Pooling in Deep Convolutional Networks",
ECCV 2014) and an image classifier built on it.

SPP max-pools a feature map of any size into fixed grids (1x1, 2x2, 4x4 by default) and
concatenates the flattened bins, so a fully connected layer can follow a convolutional
network whatever the input size: the output has ``d * sum(b * b for b in levels)`` values
(``21 d`` by default). PSPNet's pyramid pooling module (``ppm.py``) is the dense analogue.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from .resnet import ResNet

__all__ = ["SpatialPyramidPooling", "SPPClassifier", "spp_resnet18"]


class SpatialPyramidPooling(nn.Module):
    """Pool ``N x C x H x W`` into ``N x C * sum(l * l for l in levels)`` for any ``H, W >= 1``."""

    def __init__(self, levels: Sequence[int] = (1, 2, 4), pool: Literal["max", "avg"] = "max") -> None:
        super().__init__()
        if not levels or any(int(level) < 1 for level in levels):
            raise ValueError(f"levels must be positive integers, got {list(levels)!r}")
        if pool not in ("max", "avg"):
            raise ValueError(f"pool must be 'max' or 'avg', got {pool!r}")
        self.levels, self.pool = tuple(int(level) for level in levels), pool

    def output_size(self, channels: int) -> int:
        return channels * sum(level * level for level in self.levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"SpatialPyramidPooling expects N x C x H x W, got shape {tuple(x.shape)}")
        pool = F.adaptive_max_pool2d if self.pool == "max" else F.adaptive_avg_pool2d
        return torch.cat([torch.flatten(pool(x, level), 1) for level in self.levels], 1)


class SPPClassifier(nn.Module):
    """Backbone -> SPP -> fully connected classifier (SPP-net, Sec. 2.3), for any input size."""

    def __init__(self, backbone: ResNet, num_classes: int, levels: Sequence[int] = (1, 2, 4),
                 hidden: int = 1024, dropout: float = 0.5) -> None:
        super().__init__()
        self.backbone = backbone
        self.spp = SpatialPyramidPooling(levels)
        self.classifier = nn.Sequential(
            nn.Linear(self.spp.output_size(backbone.out_channels), hidden), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(hidden, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The fixed-length SPP vector of each image."""
        return self.spp(self.backbone.forward_features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def spp_resnet18(num_classes: int = 1000, **kwargs) -> SPPClassifier:
    """SPP classifier on a plain (output stride 32) ResNet-18 with the 7x7 stem."""
    return SPPClassifier(ResNet(18, deep_stem=False, output_stride=32), num_classes, **kwargs)
