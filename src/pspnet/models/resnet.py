"""Dilated ResNet backbones (He et al. 2016) as used by PSPNet (Zhao et al. 2017, Sec. 3.2 / 4.1).

Written here because torchvision does not run on every machine we support. Attribute names
follow the ImageNet checkpoints people already have: ``conv1, bn1, layer1..4, fc`` for the
classic 7x7 stem (torchvision layout), plus ``conv2, bn2, conv3, bn3`` for the deep 3x3 stem of
the original PSPNet release (``resnet50_v2.pth``). The stride of a bottleneck sits on its 3x3
convolution ("ResNet v1.5"), as in both of those releases.

The dilated network strategy (paper Sec. 3.2, after DeepLab) removes the stride of the last
stages and dilates their 3x3 convolutions instead: output stride 8 uses dilation 2 in ``layer3``
and 4 in ``layer4``; output stride 16 keeps ``layer3`` strided and uses dilation 2 in ``layer4``.

Each batch norm and the ReLU after it (with the residual add between them at a block's end) go
through :func:`~pspnet.models.norm_act.bn_relu`: one fused pass when training on a CPU, exactly
these modules otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from .max_pool import MaxPool2d
from .norm import norm_layer
from .norm_act import NormActSequential, bn_relu

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
           "RESNET_LAYERS"]

NormFactory = Callable[[int], nn.Module]


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity shortcut (ResNet-18/34).

    ``dilation`` applies to ``conv1`` (the one that carries the stride) and, unless
    ``conv2_dilation`` says otherwise, to ``conv2`` as well (mmsegmentation never dilates ``conv2``).
    """

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None, norm: NormFactory = nn.BatchNorm2d, *,
                 conv2_dilation: int | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride, dilation)
        self.bn1 = norm(planes)
        self.conv2 = _conv3x3(planes, planes, 1, dilation if conv2_dilation is None else conv2_dilation)
        self.bn2 = norm(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = bn_relu(self.bn1, self.conv1(x), self.relu)
        return bn_relu(self.bn2, self.conv2(out), self.relu, residual=identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided / dilated) -> 1x1 with a 4x channel expansion (ResNet-50/101/152)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None, norm: NormFactory = nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = _conv3x3(planes, planes, stride, dilation)
        self.bn2 = norm(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = norm(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = bn_relu(self.bn1, self.conv1(x), self.relu)
        out = bn_relu(self.bn2, self.conv2(out), self.relu)
        return bn_relu(self.bn3, self.conv3(out), self.relu, residual=identity)


RESNET_LAYERS: dict[int, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


def stage_dilations(output_stride: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(stride, dilation) of layer3 and layer4 for a given output stride (8, 16 or 32)."""
    table = {8: ((1, 2), (1, 4)), 16: ((2, 1), (1, 2)), 32: ((2, 1), (2, 1))}
    if output_stride not in table:
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride!r}")
    return table[output_stride]


class ResNet(nn.Module):
    """ResNet with a choice of stem and output stride.

    Args:
        depth: 18, 34, 50, 101 or 152.
        deep_stem: three 3x3 convolutions (64, 64, 128 channels) as in the original PSPNet
            release, instead of one 7x7 convolution (torchvision).
        output_stride: 8 (PSPNet default), 16 or 32 (plain ImageNet classifier).
        norm: "bn", "syncbn" or "gn" (GroupNorm, for tiny per-device batches).
        num_classes: if given, a global-average-pool + fully connected classifier is added.
        stem_channels: widths of the stem's convolutions: three for the deep stem (default
            64, 64, 128 as in the original release; mmsegmentation's ResNetV1c uses 32, 32, 64),
            one for the 7x7 stem (default 64). ``layer1`` takes the last width as input.
        contract_dilation: the first block of a dilated stage uses half the stage's dilation in
            the convolution that would carry the stride (mmsegmentation, CSAILVision: ``layer3.0``
            dilation 1, ``layer4.0`` dilation 2). Off (the original release): every block of a
            dilated stage uses the full dilation.
        basic_conv2_dilated: whether a BasicBlock's second 3x3 convolution is dilated too (the
            original release's builder, CSAILVision: yes; mmsegmentation: never).
    """

    def __init__(self, depth: int = 50, *, deep_stem: bool = True, output_stride: int = 8,
                 norm: str = "bn", num_classes: int | None = None,
                 stem_channels: Sequence[int] | None = None, contract_dilation: bool = False,
                 basic_conv2_dilated: bool = True) -> None:
        super().__init__()
        if depth not in RESNET_LAYERS:
            raise ValueError(f"ResNet depth must be one of {sorted(RESNET_LAYERS)}, got {depth!r}")
        stem = tuple(int(c) for c in stem_channels) if stem_channels else ((64, 64, 128) if deep_stem else (64,))
        if len(stem) != (3 if deep_stem else 1) or min(stem) < 1:
            raise ValueError(f"stem_channels must be {'three' if deep_stem else 'one'} positive width"
                             f"{'s' if deep_stem else ''} for {'the deep 3x3' if deep_stem else 'the 7x7'} stem, "
                             f"got {list(stem)}")
        block, counts = RESNET_LAYERS[depth]
        norm_fn = norm_layer(norm)
        self.depth, self.deep_stem, self.output_stride = depth, deep_stem, output_stride
        self.stem_channels, self.contract_dilation = stem, contract_dilation
        self.basic_conv2_dilated = basic_conv2_dilated
        self.relu = nn.ReLU(inplace=True)
        if deep_stem:
            self.conv1 = _conv3x3(3, stem[0], stride=2)
            self.bn1 = norm_fn(stem[0])
            self.conv2 = _conv3x3(stem[0], stem[1])
            self.bn2 = norm_fn(stem[1])
            self.conv3 = _conv3x3(stem[1], stem[2])
            self.bn3 = norm_fn(stem[2])
        else:
            self.conv1 = nn.Conv2d(3, stem[0], 7, stride=2, padding=3, bias=False)
            self.bn1 = norm_fn(stem[0])
        self.inplanes = stem[-1]
        self.maxpool = MaxPool2d(3, stride=2, padding=1)
        (s3, d3), (s4, d4) = stage_dilations(output_stride)
        self.layer1 = self._make_layer(block, 64, counts[0], 1, 1, norm_fn)
        self.layer2 = self._make_layer(block, 128, counts[1], 2, 1, norm_fn)
        self.layer3 = self._make_layer(block, 256, counts[2], s3, d3, norm_fn)
        self.layer4 = self._make_layer(block, 512, counts[3], s4, d4, norm_fn)
        self.out_channels = 512 * block.expansion
        self.fc = nn.Linear(self.out_channels, num_classes) if num_classes else None
        _init_weights(self)

    def _make_layer(self, block: type[nn.Module], planes: int, blocks: int, stride: int, dilation: int,
                    norm: NormFactory) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                norm(planes * block.expansion))
        # The original release dilates every block of a dilated stage, the first one included;
        # with contract_dilation the first block's strided-position conv uses half the dilation.
        first = dilation // 2 if self.contract_dilation and dilation > 1 else dilation
        extra = {}
        if block is BasicBlock:
            extra = {"conv2_dilation": dilation if self.basic_conv2_dilated else 1}
        layers = [block(self.inplanes, planes, stride, first, downsample, norm, **extra)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, 1, dilation, None, norm, **extra) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stem(self) -> nn.Sequential:
        """The stem as one Sequential, laid out as the original release's ``layer0``."""
        if self.deep_stem:
            return NormActSequential(self.conv1, self.bn1, nn.ReLU(inplace=True), self.conv2, self.bn2,
                                     nn.ReLU(inplace=True), self.conv3, self.bn3, nn.ReLU(inplace=True),
                                     self.maxpool)
        return NormActSequential(self.conv1, self.bn1, nn.ReLU(inplace=True), self.maxpool)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = bn_relu(self.bn1, self.conv1(x), self.relu)
        if self.deep_stem:
            x = bn_relu(self.bn2, self.conv2(x), self.relu)
            x = bn_relu(self.bn3, self.conv3(x), self.relu)
        x = self.maxpool(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        if self.fc is None:
            return x
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _init_weights(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.SyncBatchNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _builder(depth: int) -> Callable[..., ResNet]:
    def build(**kwargs) -> ResNet:
        return ResNet(depth, **kwargs)
    build.__name__ = f"resnet{depth}"
    build.__doc__ = f"ResNet-{depth}; keyword arguments as for :class:`ResNet`."
    return build


resnet18 = _builder(18)
resnet34 = _builder(34)
resnet50 = _builder(50)
resnet101 = _builder(101)
resnet152 = _builder(152)

