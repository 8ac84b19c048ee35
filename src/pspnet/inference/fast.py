"""FastPSPNet: the BN-folded PSPNet for CPU inference in fp32 or bf16, channels_last, with oneDNN
fused convolutions and the factored pyramid head where they apply.

It is built from PSPNet's structural API (``stages``, ``ppm``, ``head``, ``get_classifier()``) and
runs the same chain as ``PSPNet.forward`` in eval mode (Zhao et al. 2017, Fig. 2): backbone
features, pyramid pooling and the head, the 1x1 classifier, bilinear upsampling to the input
size. Backbone, PPM and head run in ``dtype`` (weights cast once); the classifier and the logit
upsampling always run in fp32, so near-ties between classes are not decided by bf16 rounding.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError, PSPNetError
from ..models.pspnet import PSPNet, check_image_batch
from .factored_head import FactoredPPMHead, factorable_head_conv, split_head_conv
from .onednn import OneDNNConv, fuse_sequential, resolve_onednn

__all__ = ["FastPSPNet"]


class FastPSPNet(nn.Module):
    """A folded PSPNet for inference: backbone, PPM and head (up to the classifier) in ``dtype``
    (fp32 or bf16), the 1x1 classifier and the logit upsampling in fp32.

    Args:
        net: a BN-folded PSPNet (:func:`~pspnet.inference.folding.fold_batchnorm`); its modules are
            taken over (cast, fused), so pass a copy.
        precision: ``fp32`` or ``bf16``.
        channels_last: NHWC activations (oneDNN's native layout).
        onednn: fuse conv+bias(+add)+ReLU into oneDNN primitives (:mod:`pspnet.inference.onednn`);
            ``None``: where available.
        factor_head: on the fused path, compute the pyramid levels' share of the head convolution at
            the levels' resolution (:mod:`pspnet.inference.factored_head`).
    """

    backend = "torch"

    def __init__(self, net: PSPNet, precision: str = "fp32", channels_last: bool = True,
                 onednn: bool | None = None, factor_head: bool = True) -> None:
        super().__init__()
        if precision not in ("fp32", "bf16"):
            raise ConfigError(f"FastPSPNet runs fp32 or bf16, got {precision!r}")
        self.config = net.config
        self.precision = precision
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.channels_last = channels_last
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.stages = nn.ModuleList(net.stages)
        self.ppm = net.ppm
        self.head = net.head
        self.classifier = net.get_classifier()
        # the head conv split for the factored head, as fp32 copies (the body is cast to ``dtype`` below)
        split = (split_head_conv(self.head[0], self.ppm)
                 if factor_head and factorable_head_conv(self.head[0], self.ppm) else None)
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        body = nn.ModuleList([self.stages, self.ppm, self.head])
        body.to(dtype=self.dtype, memory_format=self.memory_format)
        self.classifier.to(memory_format=self.memory_format)
        self.onednn = resolve_onednn(onednn, self.device, body)
        if self.onednn:
            self.stages = nn.ModuleList(fuse_sequential(stage, self.dtype) for stage in self.stages)
            self.head = fuse_sequential(self.head, self.dtype)
            for i, branch in enumerate(self.ppm.features):
                self.ppm.features[i] = fuse_sequential(branch, self.dtype)
        self.factored = None
        # the fused head must be that one conv with its ReLU, and every level end in a fused 1x1 conv
        if (self.onednn and split is not None and len(self.head) == 1 and isinstance(self.head[0], OneDNNConv)
                and self.head[0].attr == "relu"
                and all(isinstance(f[-1], OneDNNConv) for f in self.ppm.features)):
            conv_x, tap_weight = split
            self.factored = FactoredPPMHead(self.ppm.features, self.ppm.bins, tap_weight,
                                            OneDNNConv(conv_x, self.dtype, relu=True), self.config.align_corners)
            self.head = nn.Identity()  # its work is in self.factored; drop the 4096-channel weight

    @property
    def device(self) -> torch.device:
        return self.classifier.weight.device

    @property
    def min_input_size(self) -> int:
        return self.config.output_stride

    def train(self, mode: bool = True) -> FastPSPNet:
        if mode:
            raise PSPNetError("a model prepared for inference cannot be trained; train the plain PSPNet")
        return super().train(False)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """layer4 features (``PSPNet.forward_features``' second output) in ``dtype`` and the memory format."""
        x = x.to(dtype=self.dtype).contiguous(memory_format=self.memory_format)
        for stage in self.stages:
            x = stage(x)
        return x

    def upsample(self, logits: torch.Tensor, size) -> torch.Tensor:
        """As ``PSPNet.upsample``: bilinear, the model's ``align_corners``."""
        return F.interpolate(logits, size, mode="bilinear", align_corners=self.config.align_corners)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_compiling():
            check_image_batch(x, self.min_input_size)
        with torch.autocast(x.device.type, enabled=False):
            features = self.forward_features(x)
            hidden = self.factored(features) if self.factored is not None else self.head(self.ppm(features))
            logits = self.classifier(hidden.float())
            return self.upsample(logits, x.shape[-2:]).contiguous()
