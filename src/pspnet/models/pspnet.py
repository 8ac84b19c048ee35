"""PSPNet: dilated ResNet + pyramid pooling module + auxiliary head (Zhao et al. 2017).

Layout of the original authors' PyTorch release, so their checkpoints load key for key:
``layer0`` (stem), ``layer1..4`` (ResNet stages), ``ppm`` (Sec. 3.3), ``cls`` (3x3 conv 512, BN,
ReLU, Dropout2d(0.1), 1x1 classifier) and ``aux`` (the same on layer3 with 256 hidden channels,
Sec. 3.4, used only in training). Unlike the original, any input size is accepted (no ``8n+1``
rule): logits are upsampled bilinearly to the input's height and width.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import DataError
from .norm import NORM_NAMES, make_norm
from .ppm import PyramidPoolingModule
from .resnet import RESNET_LAYERS, ResNet

__all__ = ["PSPNetConfig", "PSPNet", "build_pspnet", "pspnet_resnet18", "pspnet_resnet34",
           "pspnet_resnet50", "pspnet_resnet101", "pspnet_resnet152"]


@dataclass
class PSPNetConfig:
    """Everything needed to rebuild a PSPNet; stored inside our weight files."""

    num_classes: int = 19
    depth: int = 50
    output_stride: int = 8
    deep_stem: bool = True
    bins: tuple[int, ...] = (1, 2, 3, 6)
    pool: str = "avg"
    norm: str = "bn"
    aux: bool = True
    head_channels: int = 512
    aux_channels: int = 256
    dropout: float = 0.1
    align_corners: bool = True
    # Conventions of other model zoos (mmsegmentation, CSAILVision); the defaults are the original
    # release's. None: the stem's usual widths (deep 64-64-128, 7x7 64) / in_channels // len(bins).
    stem_channels: tuple[int, ...] | None = None
    contract_dilation: bool = False
    basic_conv2_dilated: bool = True
    ppm_channels: int | None = None

    def __post_init__(self) -> None:
        self.bins = tuple(int(b) for b in self.bins)
        if self.stem_channels is not None:
            self.stem_channels = tuple(self.stem_channels)
        problems = []
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            problems.append(f"num_classes must be a positive integer, got {self.num_classes!r}")
        if self.depth not in RESNET_LAYERS:
            problems.append(f"depth must be one of {sorted(RESNET_LAYERS)}, got {self.depth!r}")
        if self.output_stride not in (8, 16):
            problems.append(f"output_stride must be 8 or 16, got {self.output_stride!r}")
        if self.pool not in ("avg", "max"):
            problems.append(f"pool must be 'avg' or 'max', got {self.pool!r}")
        if self.norm not in NORM_NAMES:
            problems.append(f"norm must be one of {NORM_NAMES}, got {self.norm!r}")
        if not self.bins or min(self.bins) < 1:
            problems.append(f"bins must be positive integers, got {self.bins!r}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.stem_channels is not None and (
                len(self.stem_channels) != (3 if self.deep_stem else 1)
                or not all(isinstance(c, int) and c >= 1 for c in self.stem_channels)):
            want = "three positive widths for the deep" if self.deep_stem else "one positive width for the 7x7"
            problems.append(f"stem_channels must be {want} stem (or null), got {list(self.stem_channels)!r}")
        if self.ppm_channels is not None and (not isinstance(self.ppm_channels, int) or self.ppm_channels < 1):
            problems.append(f"ppm_channels must be a positive integer or null, got {self.ppm_channels!r}")
        if problems:
            raise ValueError("invalid PSPNet config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bins"] = list(self.bins)
        if self.stem_channels is not None:
            d["stem_channels"] = list(self.stem_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PSPNetConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown PSPNet config keys {unknown}; valid keys: {sorted(known)}")
        return cls(**d)


class PSPNet(nn.Module):
    """Pyramid Scene Parsing Network.

    In ``eval()`` mode ``forward`` returns logits ``N x num_classes x H x W``. In ``train()`` mode
    with the auxiliary head it returns ``(logits, aux_logits)``, both at input resolution; the
    auxiliary branch is never computed at inference.
    """

    def __init__(self, config: PSPNetConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        if config is None:
            config = PSPNetConfig(**kwargs)
        elif kwargs:
            raise TypeError("pass either a PSPNetConfig or keyword arguments, not both")
        self.config = config
        norm = make_norm(config.norm)
        backbone = ResNet(config.depth, deep_stem=config.deep_stem, output_stride=config.output_stride,
                          norm=config.norm, stem_channels=config.stem_channels,
                          contract_dilation=config.contract_dilation,
                          basic_conv2_dilated=config.basic_conv2_dilated)
        self.layer0 = backbone.stem()
        self.layer1, self.layer2 = backbone.layer1, backbone.layer2
        self.layer3, self.layer4 = backbone.layer3, backbone.layer4
        feat_channels = backbone.out_channels
        aux_in = feat_channels // 2  # layer3 output: 1024 for ResNet-50, 256 for ResNet-18
        self.ppm = PyramidPoolingModule(feat_channels, config.bins, pool=config.pool, norm=norm,
                                        reduction_channels=config.ppm_channels,
                                        align_corners=config.align_corners)
        self.cls = _head(self.ppm.out_channels, config.head_channels, config.num_classes, config.dropout, norm)
        self.aux = (_head(aux_in, config.aux_channels, config.num_classes, config.dropout, norm)
                    if config.aux else None)
        for m in [self.ppm, self.cls] + ([self.aux] if self.aux is not None else []):
            for layer in m.modules():
                if isinstance(layer, nn.Conv2d):
                    nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
        for classifier in [self.cls[-1]] + ([self.aux[-1]] if self.aux is not None else []):
            nn.init.normal_(classifier.weight, std=0.01)  # start near uniform class scores
            nn.init.zeros_(classifier.bias)

    @property
    def min_input_size(self) -> int:
        """Smallest height/width accepted: one feature-map cell at the output stride."""
        return self.config.output_stride

    def check_input(self, x: torch.Tensor) -> None:
        """Reject what the network cannot segment, with the fix (a :class:`DataError`, a ValueError)."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise DataError(f"PSPNet expects an N x 3 x H x W image batch, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if min(h, w) < self.min_input_size:
            raise DataError(f"input of {h}x{w} pixels is too small: PSPNet with output stride "
                             f"{self.config.output_stride} needs at least {self.min_input_size}x"
                             f"{self.min_input_size}; upsample or pad the image first")
        if not x.is_floating_point():
            raise DataError(f"PSPNet expects a normalised float image, got dtype {x.dtype}")

    def backbone_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.stages for p in m.parameters()]

    def head_parameters(self) -> list[nn.Parameter]:
        """The new layers (PPM, classifier, aux head) that train at 10x the base LR."""
        mods = [self.ppm, self.cls] + ([self.aux] if self.aux is not None else [])
        return [p for m in mods for p in m.parameters()]

    # ---------------------------------------------------------------- structural API (timm-style)
    @property
    def stages(self) -> tuple[nn.Module, ...]:
        """The backbone stages ``layer0`` (stem) .. ``layer4``, in order."""
        return (self.layer0, self.layer1, self.layer2, self.layer3, self.layer4)

    @property
    def head(self) -> nn.Sequential:
        """The classifier head up to (not including) the final 1x1 classifier: 3x3 conv, BN, ReLU, dropout."""
        return self.cls[:-1]

    def get_classifier(self) -> nn.Conv2d:
        """The final 1x1 convolution (``cls.4``), the only layer that depends on the class count."""
        return self.cls[-1]

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone features ``(layer3, layer4)`` at the output stride (the aux head reads layer3, Sec. 3.4)."""
        x = self.layer2(self.layer1(self.layer0(x)))
        c3 = self.layer3(x)
        return c3, self.layer4(c3)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Pyramid pooling (Sec. 3.3) and the classifier on layer4 features: logits at the output stride."""
        return self.cls(self.ppm(features))

    def upsample(self, logits: torch.Tensor, size) -> torch.Tensor:
        """Logits bilinearly resized to the input's ``size`` (the model's ``align_corners``)."""
        return F.interpolate(logits, size, mode="bilinear", align_corners=self.config.align_corners)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if not torch.jit.is_tracing() and not torch.compiler.is_compiling():
            self.check_input(x)
        size = x.shape[-2:]
        c3, c4 = self.forward_features(x)
        out = self.upsample(self.forward_head(c4), size)
        if self.training and self.aux is not None:
            return out, self.upsample(self.aux(c3), size)
        return out


def _head(in_ch: int, hidden: int, num_classes: int, dropout: float, norm) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, hidden, 3, padding=1, bias=False), norm(hidden), nn.ReLU(inplace=True),
                         nn.Dropout2d(dropout), nn.Conv2d(hidden, num_classes, 1))


def build_pspnet(config: PSPNetConfig | dict[str, Any]) -> PSPNet:
    if isinstance(config, dict):
        config = PSPNetConfig.from_dict(config)
    return PSPNet(config)


def _builder(depth: int, doc: str):
    def build(num_classes: int = 19, **kwargs: Any) -> PSPNet:
        return PSPNet(PSPNetConfig(num_classes=num_classes, depth=depth, **kwargs))
    build.__name__ = f"pspnet_resnet{depth}"
    build.__doc__ = doc + " Keyword arguments as for :class:`PSPNetConfig` (paper defaults)."
    return build


pspnet_resnet18 = _builder(18, "PSPNet on a dilated ResNet-18: a small model for CPUs.")
pspnet_resnet34 = _builder(34, "PSPNet on a dilated ResNet-34.")
pspnet_resnet50 = _builder(50, "PSPNet-50, the paper's main ablation model (Table 1-4).")
pspnet_resnet101 = _builder(101, "PSPNet-101, used for the paper's Cityscapes/VOC results (Table 6-7).")
pspnet_resnet152 = _builder(152, "PSPNet-152 (paper Table 5).")
