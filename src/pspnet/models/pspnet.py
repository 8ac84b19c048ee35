"""PSPNet: dilated ResNet + pyramid pooling module + auxiliary head (Zhao et al. 2017).

Layout of the original authors' PyTorch release, so their checkpoints load key for key:
``layer0`` (stem), ``layer1..4`` (ResNet stages), ``ppm`` (Sec. 3.3), ``cls`` (3x3 conv 512, BN,
ReLU, Dropout2d(0.1), 1x1 classifier) and ``aux`` (the same on layer3 with 256 hidden channels,
Sec. 3.4, used only in training). Unlike the original, any input size is accepted (no ``8n+1``
rule): logits are upsampled bilinearly to the input's height and width.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import DataError
from .norm import NORM_NAMES, norm_layer
from .norm_act import NormActSequential
from .ppm import PyramidPoolingModule
from .resnet import RESNET_LAYERS, ResNet
from .schema import describe, problems, spec

__all__ = ["PSPNetConfig", "CONFIG_FIELDS", "PSPNet", "check_image_batch", "build_pspnet", "pspnet_resnet18",
           "pspnet_resnet34", "pspnet_resnet50", "pspnet_resnet101", "pspnet_resnet152"]


@dataclass
class PSPNetConfig:
    """Everything needed to rebuild a PSPNet; stored inside our weight files.

    The one definition of the model's fields: each one's type, default (the original release's),
    bounds and help text are declared here (:func:`~pspnet.models.schema.spec`), and
    :data:`CONFIG_FIELDS` is what weight-file metadata, the run config's ``model`` section and the
    CLI's choices are checked against. The bounds of the widths keep an untrusted file from making
    us allocate terabytes (``head_channels=10**9``).
    """

    num_classes: int = spec(19, "classes of the classifier", range=(1, 65536))
    depth: int = spec(50, "ResNet depth", choices=tuple(RESNET_LAYERS))
    output_stride: int = spec(8, "backbone output stride: 8 (paper, dilated layer3 and layer4) or 16",
                              choices=(8, 16))
    deep_stem: bool = spec(True, "three 3x3 stem convolutions (the original release) instead of one 7x7")
    bins: tuple[int, ...] = spec((1, 2, 3, 6), "pyramid pooling bin sizes (Sec. 3.3)", range=(1, 64),
                                 length=(1, 16))
    pool: str = spec("avg", "pooling of the pyramid levels", choices=("avg", "max"))
    norm: str = spec("bn", "normalisation layers: BatchNorm (synchronised under DDP), the same named syncbn, "
                           "or GroupNorm", choices=NORM_NAMES)
    aux: bool = spec(True, "auxiliary head on layer3 (Sec. 3.4), used in training only")
    head_channels: int = spec(512, "width of the classifier head's 3x3 convolution", range=(1, 16384))
    aux_channels: int = spec(256, "width of the auxiliary head's 3x3 convolution", range=(1, 16384))
    dropout: float = spec(0.1, "Dropout2d rate before both classifiers", range=(0.0, 1.0), open_above=True)
    align_corners: bool = spec(True, "bilinear upsampling convention of the logits")
    # Conventions of other model zoos (mmsegmentation, CSAILVision); the defaults are the original
    # release's. None: the stem's usual widths (deep 64-64-128, 7x7 64) / in_channels // len(bins).
    stem_channels: tuple[int, ...] | None = spec(
        None, "stem widths (deep: 3, 7x7: 1); null: 64-64-128 / 64", range=(1, 4096), length=(1, 3))
    contract_dilation: bool = spec(False, "the first block of a dilated stage uses half its dilation")
    basic_conv2_dilated: bool = spec(True, "a BasicBlock's second 3x3 convolution is dilated too")
    ppm_channels: int | None = spec(None, "PPM branch width; null: in_channels / len(bins)", range=(1, 16384))

    def __post_init__(self) -> None:
        found = problems(CONFIG_FIELDS, asdict(self))
        if not found and self.stem_channels is not None and len(self.stem_channels) != (3 if self.deep_stem else 1):
            want = "three positive widths for the deep" if self.deep_stem else "one positive width for the 7x7"
            found.append(f"stem_channels must be {want} stem (or null), got {list(self.stem_channels)!r}")
        if found:
            raise ValueError("invalid PSPNet config: " + "; ".join(found))
        self.bins = tuple(self.bins)
        if self.stem_channels is not None:
            self.stem_channels = tuple(self.stem_channels)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bins"] = list(self.bins)
        if self.stem_channels is not None:
            d["stem_channels"] = list(self.stem_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PSPNetConfig:
        known = set(CONFIG_FIELDS)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown PSPNet config keys {unknown}; valid keys: {sorted(known)}")
        return cls(**d)


CONFIG_FIELDS = describe(PSPNetConfig)
"""Name -> :class:`~pspnet.models.schema.FieldSpec` of every :class:`PSPNetConfig` field, in order."""


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
        norm = norm_layer(config.norm)
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
        """Reject what the network cannot segment, with the fix (:func:`check_image_batch`)."""
        check_image_batch(x, self.min_input_size)

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

    def forward(self, x: torch.Tensor, upsample: bool = True) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits at the input's size (``upsample=False``: at the output stride, for a loss that
        upsamples them itself, :class:`PSPNetLoss`); in training also the aux head's, as a pair."""
        if not torch.jit.is_tracing() and not torch.compiler.is_compiling():
            self.check_input(x)
        size = x.shape[-2:]
        resize = (lambda logits: self.upsample(logits, size)) if upsample else (lambda logits: logits)
        c3, c4 = self.forward_features(x)
        out = resize(self.forward_head(c4))
        if self.training and self.aux is not None:
            return out, resize(self.aux(c3))
        return out


def check_image_batch(x: torch.Tensor, output_stride: int, *, normalised: bool = True) -> None:
    """The one input check of PSPNet, of every prepared inference runner and of ``predict_logits``
    (which checks the 0-255 image before a resize to the base size hides a too-small one).

    Raises :class:`DataError` (a ValueError) naming the fix for anything but an ``N x 3 x H x W``
    batch, for an image smaller than one feature-map cell at ``output_stride`` and, with
    ``normalised``, for a batch that is not a (normalised) float tensor.
    """
    if x.dim() != 4 or x.shape[1] != 3:
        raise DataError(f"PSPNet expects an N x 3 x H x W image batch, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if min(h, w) < output_stride:
        raise DataError(f"input of {h}x{w} pixels is too small: PSPNet with output stride {output_stride} "
                        f"needs at least {output_stride}x{output_stride}; upsample or pad the image first")
    if normalised and not x.is_floating_point():
        raise DataError(f"PSPNet expects a normalised float image, got dtype {x.dtype}")


def _head(in_ch: int, hidden: int, num_classes: int, dropout: float, norm) -> nn.Sequential:
    return NormActSequential(nn.Conv2d(in_ch, hidden, 3, padding=1, bias=False), norm(hidden),
                             nn.ReLU(inplace=True), nn.Dropout2d(dropout), nn.Conv2d(hidden, num_classes, 1))


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
