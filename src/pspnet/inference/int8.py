"""int8 PSPNet on the torch backend: PyTorch 2 export quantisation (PT2E) with torchao's
``X86InductorQuantizer``, lowered by inductor to oneDNN int8 convolutions (VNNI / AMX).

The recipe is torchao's (``torchao.quantization.pt2e``: ``torch.export`` -> ``prepare_pt2e`` ->
calibrate -> ``convert_pt2e`` -> ``torch.compile`` with ``freezing``): static per-channel int8
weights and per-tensor uint8 activations calibrated on the given images. The 1x1 classifier stays
fp32, like on every other fast path. torchao is optional (``pip install torchao``); the ONNX Runtime
backend is the other int8 path.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, PSPNetError
from ..export import hidden_records
from ..models.pspnet import PSPNet, check_image_batch
from .calibration import calibration_batches, or_first_batch, packed
from .compiled import frozen_compile_context
from .factored_head import FactoredPSPNet

__all__ = ["TorchInt8PSPNet"]


TORCHAO_IMPORT_NOTICES = {
    "torchao": (r"^Failed to load .*_C_(mxfp8|cutlass)\w*\..*\.so",),
    "torchao.kernel.intmm": (r"Detected no triton",),
    "torch.utils._pytree": (r"is an Enum subclass and is now natively supported by torch\.compile",),
}
"""What importing torchao logs on a CPU-only torch (logger: message regexes): its CUDA kernel
libraries (mxfp8, cutlass) that cannot load, the Triton kernels it cannot use, and torch's pytree's
deprecation of how torchao registers an enum; none plays a part in CPU int8."""


def _import_torchao_quietly() -> None:
    """Import what this module needs from torchao, holding back exactly the notices of
    :data:`TORCHAO_IMPORT_NOTICES` rather than printing them into every predict run; any other
    message of torchao's, and everything of other libraries, gets through."""
    with hidden_records(TORCHAO_IMPORT_NOTICES):
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e  # noqa: F401
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer  # noqa: F401


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
    """PSPNet's eval forward (features, head, upsampling) with no input checks or autocast regions,
    for ``torch.export``."""

    def __init__(self, net: PSPNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, features = self.net.forward_features(x)
        return self.net.upsample(self.net.forward_head(features), x.shape[-2:])


class TorchInt8PSPNet(nn.Module):
    """int8 PSPNet through PT2E (module docstring). One graph per input shape, built on first use.

    ``factor_head``: export the PPM and head convolution in their factored form
    (:class:`~pspnet.inference.factored_head.FactoredPSPNet`: the levels' share of the head
    convolution at the levels' own resolution, in fp32), as the other fast paths do."""

    backend = "torch+compile"
    precision = "int8"

    def __init__(self, net: PSPNet, calibration: Iterable[torch.Tensor] | None = None,
                 factor_head: bool = True, reduce_range: bool = False) -> None:
        super().__init__()
        self.reduce_range = reduce_range  # 7-bit activations: no u8s8 saturation on CPUs without VNNI
        try:
            _import_torchao_quietly()
        except ImportError:
            raise ConfigError("precision='int8' with backend='torch' needs torchao (pip install torchao), or "
                              "use backend='onnxruntime' (pspnet predict/eval --backend onnxruntime)") from None
        self.config = net.config
        net = net.cpu().float().eval()
        self.factored = factor_head and FactoredPSPNet.applies(net)  # before the ReLUs are replaced: it looks for them
        _replace_relu(net)
        self.plain = FactoredPSPNet(net).eval() if self.factored else _PlainForward(net)
        # the quantizer names modules by their path in the exported graph ("net.cls.4", or "rest.2" where the
        # factored form calls the classifier from its own Sequential)
        classifier = net.get_classifier()
        self.classifier_names = [name for name, m in self.plain.named_modules(remove_duplicate=False)
                                 if m is classifier]
        self.calibration = calibration_batches(calibration)
        self.graphs: dict[tuple[int, ...], Any] = {}
        self.device = torch.device("cpu")

    def _graph(self, x: torch.Tensor):
        shape = tuple(x.shape)
        if shape in self.graphs:
            return self.graphs[shape]
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
        quantizer = xiq.X86InductorQuantizer()
        quantizer.set_global(xiq.get_default_x86_inductor_quantization_config(reduce_range=self.reduce_range))
        for name in self.classifier_names:  # classifier: fp32
            quantizer.set_module_name_qconfig(name, None)
        exported = torch.export.export(self.plain, (x,)).module()
        with warnings.catch_warnings():  # the stem's max-pool stays fp32 (its input is a fp32 ReLU): expected
            warnings.filterwarnings("ignore", message="The input of maxpool2d is not quantized", category=UserWarning)
            prepared = prepare_pt2e(exported, quantizer)
        for c in packed(or_first_batch(self.calibration, x), shape):
            prepared(c)
        converted = convert_pt2e(prepared)
        graph = torch.compile(converted, backend="inductor", dynamic=False)
        self.graphs[shape] = graph
        return graph

    def train(self, mode: bool = True) -> TorchInt8PSPNet:
        if mode:
            raise PSPNetError("a model prepared for inference cannot be trained; train the plain PSPNet")
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x, self.config.output_stride)
        x = x.detach().float().cpu().contiguous()
        with torch.no_grad():
            graph = self._graph(x)
            with frozen_compile_context():
                return graph(x).float()
