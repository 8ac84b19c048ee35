"""The single entry point of fast inference: :func:`prepare_for_inference` turns a PSPNet into the
fastest faithful callable for a precision and backend; :func:`prepare_model` is what evaluation,
prediction and the CLI call (fp32 on the torch backend stays the plain model).

None of the fast paths changes what the network computes in exact arithmetic: BatchNorm folds into
the convolutions (:mod:`~pspnet.inference.folding`), conv + bias + add + ReLU run as one oneDNN
primitive (:mod:`~pspnet.inference.onednn`), and the pyramid levels' share of the head's 3x3
convolution is computed at the levels' own 1x1..6x6 resolution (:mod:`~pspnet.inference.factored_head`,
about a fifth less work for PSPNet-50 at 473x473); each changes nothing but rounding. bf16 and int8
(:mod:`~pspnet.inference.int8`, :mod:`~pspnet.inference.onnxruntime`, :mod:`~pspnet.inference.openvino`)
lower the arithmetic precision only: the final 1x1 classifier and the bilinear upsampling of the logits (Zhao et al.
2017, Fig. 2(d)) always run in fp32, so near-ties between classes are not decided by rounding.

``precision="auto"`` (:mod:`~pspnet.inference.auto`) is the fastest mode that keeps the predictions
(argmax agreement with fp32 of at least 99.5% of pixels): bf16 on CPUs with native bf16
instructions (avx512_bf16 or AMX), fp32 elsewhere, and int8 (on ONNX Runtime, torch or OpenVINO)
where the weights are known to keep their labels in int8 there and a probe on this CPU finds it
faster; docs/benchmarks.md has the measurements behind this choice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .. import capability, cpu
from ..errors import ConfigError
from ..models.pspnet import PSPNet
from ..models.weights import unwrap
from .auto import AutoChoice, Int8Agreement, choose_auto, choose_from_features, one_line
from .compiled import CompiledPSPNet
from .fast import FastPSPNet
from .folding import fold_batchnorm
from .int8 import TorchInt8PSPNet
from .onnxruntime import OnnxRuntimePSPNet
from .openvino import OpenVinoPSPNet

__all__ = ["PRECISIONS", "BACKENDS", "AutoPSPNet", "prepare_for_inference", "prepare_model", "argmax_agreement"]

log = logging.getLogger("pspnet.fast")

PRECISIONS = ("auto", "fp32", "bf16", "int8")
BACKENDS = ("torch", "onnxruntime", "openvino")
_PREPARED: tuple[type, ...] = (FastPSPNet, CompiledPSPNet, TorchInt8PSPNet, OnnxRuntimePSPNet, OpenVinoPSPNet)


def _plain_pspnet(model: nn.Module) -> PSPNet:
    """The PSPNet inside ``model`` (DDP / torch.compile wrappers removed); a prepared runner is refused."""
    net = model if isinstance(model, _PREPARED) else unwrap(model)
    if isinstance(net, _PREPARED):
        raise ConfigError("this model is already prepared for inference; pass the plain PSPNet")
    if not isinstance(net, PSPNet):
        raise ConfigError(f"prepare_for_inference expects a pspnet.models.PSPNet, got {type(net).__name__}")
    return net


def prepare_for_inference(model: nn.Module, precision: str = "auto", backend: str = "torch", compile: bool = False,
                          *, channels_last: bool = True, calibration: Iterable[torch.Tensor] | None = None,
                          threads: int | None = None, onednn: bool | None = None,
                          factor_head: bool = True, int8_agreement: Int8Agreement = None,
                          expected_calls: int | None = None, reduce_range: bool | None = None) -> Any:
    """The fastest faithful form of ``model`` for inference (see the module docstring).

    Args:
        model: a :class:`~pspnet.models.PSPNet` (not modified; a folded copy is made).
        precision: ``auto`` (the fastest of the modes below that keeps the labels on this CPU:
            :mod:`~pspnet.inference.auto`), ``fp32``, ``bf16`` or ``int8``.
        backend: ``torch`` (oneDNN via PyTorch), ``onnxruntime`` or ``openvino`` (optional:
            ``pip install "pspnet[openvino]"``); with ``precision="auto"`` on the torch backend,
            ``auto`` may pick int8 on any of the three (see ``int8_agreement``).
        compile: ``torch.compile`` (inductor, frozen weights) the torch backend; the first call per
            input shape compiles (minutes on a small CPU).
        channels_last: NHWC activations for the torch backend (oneDNN's native layout).
        onednn: fuse conv+bias(+add)+ReLU into oneDNN primitives with pre-packed weights (torch
            backend, eager); default: where available.
        factor_head: compute the pyramid levels' share of the 3x3 head convolution at the levels'
            own resolution (:mod:`pspnet.inference.factored_head`; same function, about a fifth less
            work for PSPNet-50 at 473x473), on the torch backend's fused oneDNN path and on the
            onnxruntime and openvino backends.
        calibration: for int8, normalised float or uint8 image batches to calibrate activation ranges.
        threads: intra-op threads of the onnxruntime and openvino backends (default: torch's).
        int8_agreement: the argmax agreement with fp32 these weights are known to keep in int8, per
            backend (``{"onnxruntime": 0.998, "torch": 0.997, "openvino": 0.997}``; one number is the onnxruntime
            record), as a weight file's metadata records it
            (:func:`~pspnet.inference.auto.recorded_int8_agreements`); ``auto`` considers int8 on a
            backend only when it is at least 99.5% there.
        expected_calls: with ``auto``, how many calls the job will make, when known (see
            :func:`pspnet.inference.auto.choose_auto`).
        reduce_range: for int8, quantise to 7 bits so that int8 products cannot saturate on a CPU
            without int8 dot-product instructions (VNNI, AMX); default: exactly there
            (:mod:`pspnet.capability`).

    Returns a callable ``x (N x 3 x H x W normalised float) -> fp32 logits N x C x H x W`` with
    ``.precision``, ``.backend``, ``.config`` and ``.device``; it checks its input as
    :meth:`PSPNet.check_input` does.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
    net = _plain_pspnet(model)
    device = next(net.parameters()).device
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto" and backend == "torch" and not compile:
        def build(p: str, b: str, calibration_: list[torch.Tensor] | None) -> Any:
            return prepare_for_inference(net, p, b, channels_last=channels_last, calibration=calibration_,
                                         threads=threads, onednn=onednn, factor_head=factor_head)
        return AutoPSPNet(net, build, calibration=calibration, int8_agreement=int8_agreement, calls=expected_calls)
    precision = cpu.resolve_inference_precision(precision, device)
    can = capability.require(precision, backend, device)  # a named error, before anything is built
    if precision == "int8" and reduce_range is None:
        reduce_range = not can.native
    elif not can.native:
        log.warning("precision %s on %s: %s", precision, backend, can.why)
    folded = fold_batchnorm(net)
    if backend in ("onnxruntime", "openvino"):
        if device.type != "cpu":
            raise ConfigError(f"backend={backend!r} runs on the CPU; move the model to the CPU first")
        if compile:
            raise ConfigError("compile=True applies to backend='torch' only")
        runner = OnnxRuntimePSPNet if backend == "onnxruntime" else OpenVinoPSPNet
        return runner(folded, precision, calibration=calibration, threads=threads, factor_head=factor_head,
                      reduce_range=bool(reduce_range))
    if precision == "int8":
        if device.type != "cpu":
            raise ConfigError("precision='int8' runs on the CPU; move the model to the CPU first")
        return TorchInt8PSPNet(folded, calibration, factor_head=factor_head, reduce_range=bool(reduce_range))
    # compile: inductor packs and fuses itself (from the plain folded modules)
    fast = FastPSPNet(folded, precision, channels_last=channels_last, onednn=False if compile else onednn,
                      factor_head=factor_head)
    return CompiledPSPNet(fast) if compile else fast


class AutoPSPNet:
    """``precision="auto"``: decides which mode to run (:func:`pspnet.inference.auto.choose_auto`),
    builds it and runs it for every call. Where the CPU's features decide, that happens here; where a
    probe must time int8 against the torch mode, on the first call, at that input's shape, and
    ``.precision`` / ``.backend`` read ``auto`` until then. ``.choice`` says what was picked and why."""

    def __init__(self, net: PSPNet, build, *, calibration: Iterable[torch.Tensor] | None = None,
                 int8_agreement: Int8Agreement = None, calls: int | None = None) -> None:
        self.net, self.build, self.calls = net, build, calls
        self.calibration = None if calibration is None else list(calibration)
        self.int8_agreement = int8_agreement
        self.config, self.device = net.config, next(net.parameters()).device
        self.choice: AutoChoice | None = choose_from_features(self.device, int8_agreement, calls)
        self.runner: Any = None
        self.calibrated_on: str | None = None  # int8: what it calibrated on, where no calibration was given
        if self.choice is not None:  # the features decide: built now, no input shape needed
            log.info("%s", self.choice.describe())
            self.runner = self._build(self.calibration)

    @property
    def precision(self) -> str:
        return self.choice.precision if self.choice else "auto"

    @property
    def backend(self) -> str:
        return self.choice.backend if self.choice else "auto"

    def eval(self) -> AutoPSPNet:
        return self

    def decide(self, shape: tuple[int, ...]) -> AutoChoice:
        """Pick and build the mode for inputs of ``shape`` (done by the first call; callable earlier)."""
        if self.choice is None:
            self.choice = choose_auto(self.net, tuple(shape), self.build, int8_agreement=self.int8_agreement,
                                      device=self.device, calls=self.calls)
            log.info("%s", self.choice.describe())
        return self.choice

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.decide(tuple(x.shape))
        if self.runner is None:  # int8 without calibration images calibrates on this first batch
            if self.choice.precision == "int8" and not self.calibration:  # said, never silent
                self.calibrated_on = f"the first input batch ({' x '.join(map(str, x.shape))})"
                log.info("%s calibrates its activation ranges on %s only, as the weights' recorded int8 "
                         "agreement was measured; pass calibration=[...] to calibrate on chosen images",
                         self.choice.mode, self.calibrated_on)
            self.runner = self._build(self.calibration or [x])
        try:
            return self.runner(x)
        except Exception as e:  # noqa: BLE001 - auto never ends a run: the plain fp32 network always runs
            if (self.choice.precision, self.choice.backend) == ("fp32", "torch"):
                raise
            self._fall_back(e)
            return self.runner(x)

    def _build(self, calibration: list[torch.Tensor] | None) -> Any:
        """The chosen mode's runner; the fp32 torch one, with the reason logged, where building it fails."""
        try:
            return self.build(self.choice.precision, self.choice.backend, calibration)
        except Exception as e:  # noqa: BLE001
            if (self.choice.precision, self.choice.backend) == ("fp32", "torch"):
                raise
            self._fall_back(e)
            return self.runner

    def _fall_back(self, error: BaseException) -> None:
        why = one_line(error)
        log.warning("auto: %s failed here (%s); running fp32 on torch instead", self.choice.mode, why)
        self.choice = AutoChoice("fp32", "torch", reason=f"{self.choice.mode} failed here ({why})")
        self.runner = self.build("fp32", "torch", None)

    forward = __call__


_PREPARED = (*_PREPARED, AutoPSPNet)


def prepare_model(model: nn.Module, precision: str = "fp32", backend: str = "torch",
                  int8_agreement: Int8Agreement = None, expected_calls: int | None = None) -> tuple[Any, str]:
    """``(runner, precision used)``: the model in eval mode for ``fp32`` on the torch backend, else the
    callable of :func:`prepare_for_inference` (``auto`` reads ``auto`` until its first call)."""
    if isinstance(model, nn.Module):
        model.eval()
    if precision == "fp32" and backend == "torch":
        return model, "fp32"
    runner = prepare_for_inference(model, precision=precision, backend=backend, int8_agreement=int8_agreement,
                                   expected_calls=expected_calls)
    return runner, getattr(runner, "precision", precision)


def argmax_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of pixels whose arg-max class is the same in two logit (or label) tensors: the
    measure behind ``precision="auto"`` (at least 99.5% against fp32)."""
    la = a.argmax(1) if a.dim() == 4 else a
    lb = b.argmax(1) if b.dim() == 4 else b
    return float((la == lb).float().mean())
