"""The OpenVINO backend: the folded network exported to ONNX, as for ONNX Runtime
(:class:`~pspnet.inference.onnxruntime.OnnxGraphPSPNet`), compiled by OpenVINO's CPU plugin for the
input's shape, in fp32, bf16 or int8.

int8 is the same static quantisation the ONNX Runtime backend makes (ONNX Runtime's
``quantize_static``, QDQ format, min/max calibration, the classifier left in fp32) with the
placement OpenVINO's CPU plugin runs fastest: only the convolutions' inputs and outputs quantised
(the outputs let one int8 convolution hand int8 to the next), symmetric int8 activations and
per-channel symmetric int8 weights. OpenVINO reads the QDQ pairs as its own
quantisation (FakeQuantize) and runs the convolutions with int8 kernels: AMX-INT8 tiles on a Xeon that
has them, VNNI elsewhere. No NNCF is needed: on a Xeon with AMX this ran 1.19x faster than
``nncf.quantize`` of the file ``pspnet export`` writes (docs/benchmarks.md).

Everything around the int8 convolutions runs at ``INFERENCE_PRECISION_HINT`` f32, so the classifier
and the logits' upsampling stay fp32 as on every other fast path. OpenVINO is optional
(``pip install "pspnet[openvino]"``), imported where used.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cpu import openvino_version
from ..errors import ConfigError
from ..models.pspnet import PSPNet
from .onnxruntime import OnnxGraphPSPNet

__all__ = ["OpenVinoPSPNet"]

HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
"""OpenVINO's ``INFERENCE_PRECISION_HINT`` for each precision: int8 keeps what it does not quantise in f32."""


class OpenVinoPSPNet(OnnxGraphPSPNet):
    """The folded network run by OpenVINO's CPU plugin (module docstring): fp32, bf16 (on CPUs with
    native bf16) or int8 calibrated on ``calibration`` (the first input batch where none is given)."""

    backend = "openvino"
    precisions = ("fp32", "bf16", "int8")
    pool_product = "matmul"  # left in float by the conv-only quantisation, so the Einsum form is not needed
    quantization = {"op_types": ("Conv",), "activations": "int8"}

    def __init__(self, net: PSPNet, precision: str = "fp32", calibration: Iterable[torch.Tensor] | None = None,
                 threads: int | None = None, cache_dir: str | Path | None = None, factor_head: bool = True,
                 reduce_range: bool = False) -> None:
        if openvino_version() is None:
            raise ConfigError("backend='openvino' needs OpenVINO, an optional dependency: "
                              "pip install \"pspnet[openvino]\" (or pip install openvino)")
        super().__init__(net, precision, calibration, threads, cache_dir, factor_head, reduce_range)
        import openvino
        self.core = openvino.Core()

    def load(self, path: Path) -> Any:
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": self.threads,
                  "INFERENCE_PRECISION_HINT": HINTS[self.precision]}
        compiled = self.core.compile_model(self.core.read_model(str(path)), "CPU", config)
        return compiled.create_infer_request()

    def run(self, session: Any, x: np.ndarray) -> np.ndarray:
        session.infer({0: x})
        return session.get_output_tensor(0).data.copy()
