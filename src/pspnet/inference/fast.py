"""Fast PSPNet inference on CPUs: folded BatchNorm, channels_last, bf16, int8, torch.compile, ONNX Runtime.

None of these changes what the network computes in exact arithmetic. In eval mode a BatchNorm is a
per-channel affine map (Ioffe & Szegedy 2015), so it folds into the convolution before it (every BN
of PSPNet follows a convolution: the ResNet blocks, Sec. 3.2; the pyramid pooling branches, Sec. 3.3;
the classifier head, Fig. 2(d)); the folded network is the same function up to fp32 rounding and
saves one pass over every feature map. The pyramid levels' share of the head's 3x3 convolution
is computed at the levels' own 1x1..6x6 resolution (``factored_head.py``: bilinear upsampling is
linear, so it commutes with the convolution's channel mixing), which removes about a fifth of the
work of PSPNet-50 at 473x473 and again changes nothing but rounding. bf16 and int8 lower the arithmetic precision only: the
final 1x1 classifier and the bilinear upsampling of the logits (Fig. 2(d)) always run in fp32, so
near-ties between classes are not decided by bf16 rounding.

``prepare_for_inference`` returns a callable that takes an ImageNet-normalised float batch
``N x 3 x H x W`` and returns fp32 logits ``N x C x H x W``, like ``PSPNet.eval()``'s forward.
``precision="auto"`` is the fastest mode that keeps the predictions (argmax agreement with fp32 of
at least 99.5% of pixels, mIoU within 0.3 points): bf16 on CPUs with native bf16 instructions
(avx512_bf16 or AMX), fp32 elsewhere; docs/benchmarks.md has the measurements behind this choice.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .. import cpu
from ..cpu import onednn_available
from ..errors import ConfigError, PSPNetError
from ..models.pspnet import PSPNet
from ..models.resnet import BasicBlock, Bottleneck, ResNet
from .factored_head import FactoredPPMHead, factorable_head_conv, split_head_conv

log = logging.getLogger("pspnet.fast")

__all__ = ["PRECISIONS", "BACKENDS", "fuse_conv_bn", "fold_batchnorm",
           "prepare_for_inference", "FastPSPNet", "OneDNNConv", "onednn_available", "OnnxRuntimePSPNet",
           "TorchInt8PSPNet", "argmax_agreement"]

PRECISIONS = ("auto", "fp32", "bf16", "int8")
BACKENDS = ("torch", "onnxruntime")
_BN = nn.modules.batchnorm._BatchNorm


# ----------------------------------------------------------------------------------------- folding
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
    for name, m in list(model.named_modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, (nn.Dropout, nn.Dropout2d)):
                setattr(m, child_name, nn.Identity())
    left = sum(isinstance(m, _BN) for m in model.modules())
    log.debug("folded %d BatchNorm layers into convolutions (%d left)", n, left)
    return model


def _check_pspnet(model: nn.Module) -> PSPNet:
    inner = getattr(model, "module", model)  # DDP / DataParallel
    if isinstance(inner, (FastPSPNet, OnnxRuntimePSPNet)):
        raise ConfigError("this model is already prepared for inference; pass the plain PSPNet")
    if not isinstance(inner, PSPNet):
        raise ConfigError(f"prepare_for_inference expects a pspnet.models.PSPNet, got {type(inner).__name__}")
    return inner


# ----------------------------------------------------------------------------------------- torch backend
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


class _FusedBlock(nn.Module):
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


def _fuse_sequential(seq: nn.Sequential, dtype: torch.dtype) -> nn.Sequential:
    """Conv (Identity*) ReLU -> one fused OneDNNConv; Identity layers dropped; the rest kept."""
    items = [m for m in seq if not isinstance(m, nn.Identity)]
    out, i = [], 0
    while i < len(items):
        m = items[i]
        if isinstance(m, nn.Conv2d):
            relu = i + 1 < len(items) and isinstance(items[i + 1], nn.ReLU)
            out.append(OneDNNConv(m, dtype, relu=relu))
            i += 2 if relu else 1
        elif isinstance(m, (BasicBlock, Bottleneck)):
            out.append(_FusedBlock(m, dtype))
            i += 1
        else:
            out.append(m)
            i += 1
    return nn.Sequential(*out)


def _fusable(net: nn.Module) -> bool:
    """Every norm layer was folded (a GroupNorm model keeps the plain modules)."""
    return not any(isinstance(m, (_BN, nn.GroupNorm, nn.LayerNorm)) for m in net.modules())


class FastPSPNet(nn.Module):
    """A folded PSPNet for inference: backbone, PPM and head (up to the classifier) in ``dtype``
    (fp32 or bf16, weights cast once), the 1x1 classifier and the logit upsampling in fp32."""

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
        self.layer0, self.layer1, self.layer2 = net.layer0, net.layer1, net.layer2
        self.layer3, self.layer4, self.ppm = net.layer3, net.layer4, net.ppm
        self.head = nn.Sequential(*list(net.cls)[:-1])
        self.classifier = net.cls[-1]
        self.align_corners = net.config.align_corners
        # the head conv split for the factored head, as fp32 copies (the body is cast to ``dtype`` below)
        split = (split_head_conv(self.head[0], self.ppm)
                 if factor_head and factorable_head_conv(self.head[0], self.ppm) else None)
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        body = [self.layer0, self.layer1, self.layer2, self.layer3, self.layer4, self.ppm, self.head]
        for m in body:
            m.to(dtype=self.dtype, memory_format=self.memory_format)
        self.classifier.to(memory_format=self.memory_format)
        device = self.classifier.weight.device
        if onednn is None:
            onednn = onednn_available(device) and _fusable(nn.ModuleList(body))
        elif onednn and not (onednn_available(device) and _fusable(nn.ModuleList(body))):
            raise ConfigError("onednn=True needs a CPU build of PyTorch with mkldnn and a BatchNorm model "
                              "(every norm folded)")
        self.onednn = bool(onednn)
        if self.onednn:
            for name in ("layer0", "layer1", "layer2", "layer3", "layer4", "head"):
                setattr(self, name, _fuse_sequential(getattr(self, name), self.dtype))
            for i, branch in enumerate(self.ppm.features):
                self.ppm.features[i] = _fuse_sequential(branch, self.dtype)
        self.factored = None
        # the fused head must be that one conv with its ReLU, and every level end in a fused 1x1 conv
        if (self.onednn and split is not None and len(self.head) == 1 and isinstance(self.head[0], OneDNNConv)
                and self.head[0].attr == "relu"
                and all(isinstance(f[-1], OneDNNConv) for f in self.ppm.features)):
            conv_x, tap_weight = split
            self.factored = FactoredPPMHead(self.ppm.features, self.ppm.bins, tap_weight,
                                            OneDNNConv(conv_x, self.dtype, relu=True), self.align_corners)
            self.head = nn.Identity()  # its work is in self.factored; drop the 4096-channel weight

    @property
    def device(self) -> torch.device:
        return self.classifier.weight.device

    @property
    def min_input_size(self) -> int:
        return self.config.output_stride

    def train(self, mode: bool = True) -> "FastPSPNet":
        if mode:
            raise PSPNetError("a model prepared for inference cannot be trained; train the plain PSPNet")
        return super().train(False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Input of the classifier (head output), in ``self.dtype``."""
        x = x.to(dtype=self.dtype).contiguous(memory_format=self.memory_format)
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.layer0(x)))))
        if self.factored is not None:
            return self.factored(x)
        return self.head(self.ppm(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        with torch.autocast(x.device.type, enabled=False):
            f = self.features(x)
            logits = self.classifier(f.float())
            return F.interpolate(logits, size, mode="bilinear", align_corners=self.align_corners).contiguous()


def _frozen_compile_context():
    """inductor with ``freezing``: weights become constants, so inductor pre-packs them for oneDNN
    and folds layout conversions (set only while compiling / running, not globally)."""
    import torch._inductor.config as inductor_config
    return inductor_config.patch(freezing=True)


class _Compiled(nn.Module):
    """``torch.compile`` (inductor, frozen weights) of a :class:`FastPSPNet`; compiles on the first
    call for each input shape."""

    def __init__(self, inner: FastPSPNet) -> None:
        super().__init__()
        self.inner = inner
        self.compiled = torch.compile(inner, backend="inductor", dynamic=False)
        self.config, self.precision, self.backend = inner.config, inner.precision, "torch+compile"

    @property
    def device(self) -> torch.device:
        return self.inner.device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), _frozen_compile_context():
            return self.compiled(x)


# ----------------------------------------------------------------------------------------- int8 (torch)
class _ReLU(nn.Module):
    """``torch.relu`` as a module: one graph partition per call. A shared ``nn.ReLU`` (the ResNet
    blocks apply ``self.relu`` twice) makes the PT2E quantizer see one partition with two outputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)


def _replace_relu(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.ReLU):
            setattr(module, name, _ReLU())
        else:
            _replace_relu(child)


class _PlainForward(nn.Module):
    """PSPNet's eval forward with no input checks or autocast regions, for ``torch.export``."""

    def __init__(self, net: PSPNet) -> None:
        super().__init__()
        self.net = net
        _replace_relu(net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x0 = x
        x = n.layer4(n.layer3(n.layer2(n.layer1(n.layer0(x)))))
        x = n.cls(n.ppm(x))
        return F.interpolate(x, x0.shape[-2:], mode="bilinear", align_corners=n.config.align_corners)


class TorchInt8PSPNet(nn.Module):
    """int8 PSPNet through PyTorch 2 export quantisation (PT2E) with the X86InductorQuantizer
    (torchao): static per-channel int8 weights, per-tensor uint8 activations calibrated on the given
    images, lowered by inductor to oneDNN int8 convolutions (VNNI / AMX). One graph per input shape,
    built on first use; the classifier stays fp32."""

    backend = "torch+compile"
    precision = "int8"

    def __init__(self, net: PSPNet, calibration: Iterable[torch.Tensor] | None = None) -> None:
        super().__init__()
        try:
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e  # noqa: F401
            from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer  # noqa: F401
        except ImportError:
            raise ConfigError("precision='int8' with backend='torch' needs torchao (pip install torchao), or "
                              "use backend='onnxruntime' (pspnet predict/eval --backend onnxruntime)") from None
        self.config = net.config
        self.plain = _PlainForward(net.cpu().float().eval())
        self.calibration = None if calibration is None else [_as_float_batch(c) for c in calibration]
        self.graphs: dict[tuple[int, ...], Any] = {}
        self.device = torch.device("cpu")

    def _graph(self, x: torch.Tensor):
        shape = tuple(x.shape)
        if shape in self.graphs:
            return self.graphs[shape]
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
        quantizer = xiq.X86InductorQuantizer()
        quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
        quantizer.set_module_name_qconfig(f"net.cls.{len(self.plain.net.cls) - 1}", None)  # classifier: fp32
        exported = torch.export.export(self.plain, (x,)).module()
        prepared = prepare_pt2e(exported, quantizer)
        calib = self.calibration
        if not calib:
            log.warning("int8 without calibration images: calibrating on the first input batch; pass "
                        "calibration=[...] (a few dozen representative images) for better accuracy")
            calib = [x]
        for c in _resized(calib, shape):
            prepared(c)
        converted = convert_pt2e(prepared)
        graph = torch.compile(converted, backend="inductor", dynamic=False)
        self.graphs[shape] = graph
        return graph

    def train(self, mode: bool = True) -> "TorchInt8PSPNet":
        if mode:
            raise PSPNetError("a model prepared for inference cannot be trained; train the plain PSPNet")
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float().cpu().contiguous()
        with torch.no_grad():
            graph = self._graph(x)
            with _frozen_compile_context():
                return graph(x).float()


def _resized(calibration: Sequence[torch.Tensor], shape: tuple[int, ...]) -> list[torch.Tensor]:
    """Calibration batches resized to the graph's H x W and split/tiled to its batch size."""
    out = []
    for c in calibration:
        c = _as_float_batch(c)
        if tuple(c.shape[-2:]) != tuple(shape[-2:]):
            c = F.interpolate(c, size=tuple(shape[-2:]), mode="bilinear", align_corners=True)
        for i in range(c.shape[0]):
            out.append(c[i:i + 1].expand(shape[0], -1, -1, -1).contiguous())
    return out


# ----------------------------------------------------------------------------------------- ONNX Runtime
def _pool_matrix(n_in: int, bins: int, dtype: torch.dtype) -> torch.Tensor:
    """``bins x n_in`` averaging weights of adaptive average pooling: bin ``i`` averages
    ``[floor(i * n / b), ceil((i + 1) * n / b))``, as ``F.adaptive_avg_pool2d`` does."""
    m = torch.zeros(bins, n_in, dtype=torch.float64)
    for i in range(bins):
        lo, hi = (i * n_in) // bins, -((-(i + 1) * n_in) // bins)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m.to(dtype)


class _MatmulPPM(nn.Module):
    """The pyramid pooling module with adaptive average pooling written as two matrix products
    (``P_h @ x @ P_w^T``), which ONNX can express for any feature-map size; same function."""

    def __init__(self, ppm: nn.Module) -> None:
        super().__init__()
        if getattr(ppm, "pool", "avg") != "avg":
            raise ConfigError("the onnxruntime backend supports the PPM's average pooling only (pool='avg')")
        self.bins, self.align_corners = ppm.bins, ppm.align_corners
        self.branches = nn.ModuleList(nn.Sequential(*list(branch)[1:]) for branch in ppm.features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        out = [x]
        for b, branch in zip(self.bins, self.branches):
            ph, pw = _pool_matrix(h, b, x.dtype), _pool_matrix(w, b, x.dtype)
            pooled = torch.matmul(torch.matmul(ph, x), pw.t())
            out.append(F.interpolate(branch(pooled), (h, w), mode="bilinear", align_corners=self.align_corners))
        return torch.cat(out, 1)


def _exportable(net: PSPNet) -> nn.Module:
    """The export helper's :func:`pspnet.export.make_exportable` (pyramid pools as matrix products);
    :class:`_MatmulPPM` if that module is not available."""
    try:
        from ..export import make_exportable
    except ImportError:  # pragma: no cover - export module missing
        net = copy.deepcopy(net).eval()
        net.ppm = _MatmulPPM(net.ppm)
        return net
    return make_exportable(net)


class _ConvAddReLU(nn.Module):
    """``relu(conv(x) + residual)`` with plain ops (what the exported graph needs)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x) + residual)


class _FactoredExport(nn.Module):
    """A folded, exportable PSPNet whose PPM + head convolution run as a
    :class:`~pspnet.inference.factored_head.FactoredPPMHead` with plain ops, for the fixed-shape
    graphs of the onnxruntime backend (the interpolation matrices become constants of the graph)."""

    def __init__(self, net: PSPNet) -> None:
        super().__init__()
        self.net = net
        conv_x, tap_weight = split_head_conv(net.cls[0], net.ppm)
        self.head = FactoredPPMHead(net.ppm.features, net.ppm.bins, tap_weight, _ConvAddReLU(conv_x),
                                    net.config.align_corners)
        self.rest = nn.Sequential(*[m for m in list(net.cls)[3:] if not isinstance(m, nn.Identity)])

    @staticmethod
    def applies(net: PSPNet) -> bool:
        """The folded head is the factorable conv, Identity (its BN), ReLU, ... and each level a 1x1 conv."""
        cls = net.cls
        return (len(cls) >= 4 and factorable_head_conv(cls[0], net.ppm) and isinstance(cls[1], nn.Identity)
                and isinstance(cls[2], nn.ReLU) and all(isinstance(f[1], nn.Conv2d) for f in net.ppm.features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        f = n.layer4(n.layer3(n.layer2(n.layer1(n.layer0(x)))))
        logits = self.rest(self.head(f))
        return F.interpolate(logits, x.shape[-2:], mode="bilinear", align_corners=n.config.align_corners)


def _export_onnx(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Export a fixed-shape fp32 graph: the pooling matrices of this shape fold into constants."""
    import warnings
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), input_names=["image"], output_names=["logits"],
                          opset_version=17, dynamo=False, do_constant_folding=True)


class _CalibrationReader:
    def __init__(self, arrays: Sequence[Any]) -> None:
        self.arrays, self.i = list(arrays), 0

    def get_next(self):
        if self.i >= len(self.arrays):
            return None
        self.i += 1
        return {"image": self.arrays[self.i - 1]}

    def rewind(self) -> None:
        self.i = 0


class OnnxRuntimePSPNet:
    """The folded fp32 network exported to ONNX and run by ONNX Runtime (one fixed-shape graph and
    session per input shape, made on first use), optionally statically quantised to int8 (QDQ,
    per-channel weights) with calibration images. With ``factor_head`` the PPM and head
    convolution are exported in their factored form (:class:`_FactoredExport`).

    The last convolution (classifier) and the final upsampling stay fp32 in the int8 graph.
    """

    backend = "onnxruntime"

    def __init__(self, net: PSPNet, precision: str = "fp32", calibration: Iterable[torch.Tensor] | None = None,
                 threads: int | None = None, cache_dir: str | Path | None = None, factor_head: bool = True) -> None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise ConfigError("backend='onnxruntime' needs onnxruntime: pip install 'pspnet[onnx]'") from None
        if precision not in ("fp32", "int8"):
            raise ConfigError(f"the onnxruntime backend runs fp32 or int8, got {precision!r} "
                              f"(bf16 runs with backend='torch')")
        self.config, self.precision = net.config, precision
        self.module = _exportable(net).cpu().float()
        self.factored = factor_head and _FactoredExport.applies(self.module)
        if self.factored:
            self.module = _FactoredExport(self.module).eval()
        self.calibration = None if calibration is None else [_as_float_batch(c) for c in calibration]
        self.threads = threads or torch.get_num_threads()
        self._tmp = tempfile.TemporaryDirectory(prefix="pspnet-onnx-") if cache_dir is None else None
        self.cache_dir = Path(cache_dir) if cache_dir is not None else Path(self._tmp.name)
        self.sessions: dict[tuple[int, ...], Any] = {}
        self.device = torch.device("cpu")

    def eval(self) -> "OnnxRuntimePSPNet":
        return self

    def _session(self, shape: tuple[int, ...], example: torch.Tensor):
        import onnxruntime as ort
        if shape in self.sessions:
            return self.sessions[shape]
        tag = "x".join(str(s) for s in shape)
        fp32_path = self.cache_dir / f"pspnet_{tag}.onnx"
        with torch.no_grad():
            _export_onnx(self.module, example.float().contiguous(), fp32_path)
        path = fp32_path
        if self.precision == "int8":
            path = self.cache_dir / f"pspnet_{tag}_int8.onnx"
            calib = self.calibration
            if not calib:
                log.warning("int8 without calibration images: calibrating on the first input batch; pass "
                            "calibration=[...] (a few dozen representative images) for better accuracy")
                calib = [example]
            _quantize_static(fp32_path, path, calib, shape)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.sessions[shape] = sess
        return sess

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float().cpu().contiguous()
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"PSPNet expects an N x 3 x H x W image batch, got shape {tuple(x.shape)}")
        sess = self._session(tuple(x.shape), x)
        out = sess.run(["logits"], {"image": x.numpy()})[0]
        return torch.from_numpy(out)

    forward = __call__


def _as_float_batch(x: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.dim() == 3:
        x = x[None]
    if not x.is_floating_point():  # uint8 image(s): normalise like the model's input
        from ..data.transforms import normalize
        x = normalize(x)
    return x.float()


def _own_initializers(model: Any) -> int:
    """Give every ``Identity(initializer)`` output its own copy of the initializer; returns how many.

    The exporter shares equal tensors (e.g. the all-zero folded biases of a freshly initialised
    network) through Identity nodes; ONNX Runtime's quantiser then finds no bias initializer,
    leaves those convolutions as dequantise -> fp32 Conv -> quantise, and the int8 graph runs
    slower than the fp32 one.
    """
    from onnx import numpy_helper
    inits = {i.name: i for i in model.graph.initializer}
    keep, added = [], 0
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            copy_ = numpy_helper.from_array(numpy_helper.to_array(inits[node.input[0]]), node.output[0])
            model.graph.initializer.append(copy_)
            added += 1
        else:
            keep.append(node)
    if added:
        del model.graph.node[:]
        model.graph.node.extend(keep)
    return added


def _quantize_static(src: Path, dst: Path, calibration: Sequence[torch.Tensor], shape: tuple[int, ...]) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    arrays = [c.numpy() for c in _resized(calibration, shape)]
    graph = onnx.load(str(src))
    if _own_initializers(graph):
        src = dst.with_name(dst.stem + "_src.onnx")
        onnx.save(graph, str(src))
    convs = [n.name for n in graph.graph.node if n.op_type == "Conv"]
    keep_fp32 = convs[-1:]  # the classifier
    # the quantiser logs advice through the root logger (pre-processing, bias initializers); a
    # filter on the root logger drops only those direct calls, not pspnet's own propagated records
    quiet = _DropRecords()
    logging.getLogger().addFilter(quiet)
    try:
        quantize_static(str(src), str(dst), _CalibrationReader(arrays), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=keep_fp32,
                        op_types_to_quantize=["Conv", "MaxPool", "Add", "Concat", "Relu"],
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    finally:
        logging.getLogger().removeFilter(quiet)
    if quiet.dropped:
        log.debug("onnxruntime quantiser: %d advisory messages hidden", quiet.dropped)


class _DropRecords(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            self.dropped += 1
            return False
        return True


# ----------------------------------------------------------------------------------------- entry point
def prepare_for_inference(model: nn.Module, precision: str = "auto", backend: str = "torch", compile: bool = False,
                          *, channels_last: bool = True, calibration: Iterable[torch.Tensor] | None = None,
                          threads: int | None = None, onednn: bool | None = None,
                          factor_head: bool = True) -> Any:
    """The fastest faithful form of ``model`` for inference (see the module docstring).

    Args:
        model: a :class:`~pspnet.models.PSPNet` (not modified; a folded copy is made).
        precision: ``auto`` (bf16 on CPUs with native bf16, else fp32), ``fp32``, ``bf16`` or ``int8``.
        backend: ``torch`` (oneDNN via PyTorch) or ``onnxruntime``.
        compile: ``torch.compile`` (inductor, frozen weights) the torch backend; the first call per
            input shape compiles (minutes on a small CPU).
        channels_last: NHWC activations for the torch backend (oneDNN's native layout).
        onednn: fuse conv+bias(+add)+ReLU into oneDNN primitives with pre-packed weights (torch
            backend, eager); default: where available.
        factor_head: compute the pyramid levels' share of the 3x3 head convolution at the levels'
            own resolution (:mod:`pspnet.inference.factored_head`; same function, about a fifth less
            work for PSPNet-50 at 473x473), on the torch backend's fused oneDNN path and on the
            onnxruntime backend.
        calibration: for int8, normalised float or uint8 image batches to calibrate activation ranges.
        threads: intra-op threads of the onnxruntime backend (default: torch's).

    Returns a callable ``x (N x 3 x H x W normalised float) -> fp32 logits N x C x H x W`` with
    ``.precision``, ``.backend``, ``.config`` and ``.device``.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
    net = _check_pspnet(model)
    device = next(net.parameters()).device
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    precision = cpu.resolve_inference_precision(precision, device)
    folded = fold_batchnorm(net)
    if backend == "onnxruntime":
        if device.type != "cpu":
            raise ConfigError("backend='onnxruntime' runs on the CPU; move the model to the CPU first")
        if compile:
            raise ConfigError("compile=True applies to backend='torch' only")
        return OnnxRuntimePSPNet(folded, precision, calibration=calibration, threads=threads,
                                 factor_head=factor_head)
    if precision == "int8":
        if device.type != "cpu":
            raise ConfigError("precision='int8' runs on the CPU; move the model to the CPU first")
        return TorchInt8PSPNet(folded, calibration)
    # compile: inductor packs and fuses itself (from the plain folded modules)
    fast = FastPSPNet(folded, precision, channels_last=channels_last, onednn=False if compile else onednn,
                      factor_head=factor_head)
    return _Compiled(fast) if compile else fast


def argmax_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of pixels whose arg-max class is the same in two logit (or label) tensors."""
    la = a.argmax(1) if a.dim() == 4 else a
    lb = b.argmax(1) if b.dim() == 4 else b
    return float((la == lb).float().mean())


def _env_threads() -> int | None:  # pragma: no cover - helper for scripts
    v = os.environ.get("OMP_NUM_THREADS")
    return int(v) if v and v.isdigit() else None
