"""The ONNX Runtime backend: the folded network exported to ONNX and run by ONNX Runtime's CPU
execution provider, in fp32 or statically quantised to int8.

One fixed-shape graph and session per input shape, made on first use: with a fixed shape the
pyramid pools (:func:`pspnet.export.make_exportable`: adaptive pooling as matrix products) and
the factored head's interpolation matrices (:mod:`pspnet.inference.factored_head`) fold into
constants of the graph. int8 follows ONNX Runtime's static quantisation recipe
(``onnxruntime.quantization.quantize_static``: QDQ format, per-channel symmetric int8 weights,
asymmetric uint8 activations with min/max calibration); the last convolution (the 1x1
classifier) and the final upsampling stay fp32, like on every other fast path. onnx and
onnxruntime are dependencies of pspnet, imported where used.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..export import EXPORTER_NOTICES, hidden_records, hidden_warnings, make_exportable
from ..models.pspnet import PSPNet, check_image_batch
from .calibration import calibration_batches, or_first_batch, packed
from .factored_head import FactoredPSPNet

log = logging.getLogger("pspnet.fast")

__all__ = ["OnnxGraphPSPNet", "OnnxRuntimePSPNet", "calibration_frees_activations", "calibration_in_priority_order"]


FIXED_SHAPE_NOTICES: tuple[tuple[type[Warning], str], ...] = (
    (torch.jit.TracerWarning, r"Converting a tensor to a Python integer might cause the trace to be incorrect"),
    (torch.jit.TracerWarning, r"Iterating over a tensor might cause the trace to be incorrect"),
)
"""The tracer's notes on the factored head's shape arithmetic (:mod:`.factored_head`): constants of a
graph exported for one fixed input shape, as intended; hidden with the exporter's own notices."""


def _export_onnx(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Export a fixed-shape fp32 graph: the pooling matrices of this shape fold into constants."""
    with hidden_warnings(EXPORTER_NOTICES + FIXED_SHAPE_NOTICES), torch.no_grad():  # those notices, no other
        torch.onnx.export(module, (example,), str(path), input_names=["image"], output_names=["logits"],
                          opset_version=17, dynamo=False, do_constant_folding=True)


class _CalibrationReader:
    """The ``CalibrationDataReader`` protocol of ``onnxruntime.quantization`` over a list of arrays."""

    def __init__(self, arrays: Sequence[Any]) -> None:
        self.arrays, self.i = list(arrays), 0

    def get_next(self):
        if self.i >= len(self.arrays):
            return None
        self.i += 1
        return {"image": self.arrays[self.i - 1]}

    def rewind(self) -> None:
        self.i = 0


class OnnxGraphPSPNet:
    """What the ONNX Runtime and OpenVINO backends share: the folded fp32 network exported to one
    fixed-shape ONNX graph per input shape (statically quantised to int8 where asked), loaded by the
    subclass's engine (:meth:`load`) and run on numpy arrays (:meth:`run`). With ``factor_head`` the
    PPM and head convolution are exported in their factored form
    (:class:`~pspnet.inference.factored_head.FactoredPSPNet`)."""

    backend = ""
    precisions: tuple[str, ...] = ("fp32", "int8")
    pool_product = "matmul"  # the pools as two MatMuls (export.BinPool2d)
    quantization: dict[str, Any] = {}  # keyword arguments of _quantize_static

    def __init__(self, net: PSPNet, precision: str = "fp32", calibration: Iterable[torch.Tensor] | None = None,
                 threads: int | None = None, cache_dir: str | Path | None = None, factor_head: bool = True,
                 reduce_range: bool = False) -> None:
        if precision not in self.precisions:
            raise ConfigError(f"the {self.backend} backend runs {' or '.join(self.precisions)}, got {precision!r}"
                              + (" (bf16 runs with backend='torch')" if "bf16" not in self.precisions else ""))
        self.config, self.precision = net.config, precision
        self.reduce_range = reduce_range  # 7-bit weights: no u8s8 saturation on CPUs without VNNI
        # not ``.module``: that name marks a DDP-style wrapper to ``pspnet.models.weights.unwrap``
        self.exportable = make_exportable(net, pool_product=self.pool_product).cpu().float()
        self.factored = factor_head and FactoredPSPNet.applies(self.exportable)
        if self.factored:
            self.exportable = FactoredPSPNet(self.exportable).eval()
        self.calibration = calibration_batches(calibration)
        self.threads = threads or torch.get_num_threads()
        self._tmp = tempfile.TemporaryDirectory(prefix=f"pspnet-{self.backend}-") if cache_dir is None else None
        self.cache_dir = Path(cache_dir) if cache_dir is not None else Path(self._tmp.name)
        self.sessions: dict[tuple[int, ...], Any] = {}
        self.device = torch.device("cpu")

    def eval(self) -> OnnxGraphPSPNet:
        return self

    def graph(self, shape: tuple[int, ...], example: torch.Tensor) -> Path:
        """The ONNX file for inputs of ``shape``: fp32, or int8 calibrated on this backend's images
        (the first input batch where none were given)."""
        tag = "x".join(str(s) for s in shape)
        fp32_path = self.cache_dir / f"pspnet_{tag}.onnx"
        _export_onnx(self.exportable, example.float().contiguous(), fp32_path)
        if self.precision != "int8":
            return fp32_path
        path = self.cache_dir / f"pspnet_{tag}_int8.onnx"
        _quantize_static(fp32_path, path, or_first_batch(self.calibration, example), shape,
                         reduce_range=self.reduce_range, **self.quantization)
        return path

    def load(self, path: Path) -> Any:
        """The engine's runnable form of the ONNX file at ``path``."""
        raise NotImplementedError

    def run(self, session: Any, x: np.ndarray) -> np.ndarray:
        """The logits of ``x`` (N x 3 x H x W float32) through ``session`` (what :meth:`load` made)."""
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x, self.config.output_stride)
        x = x.detach().float().cpu().contiguous()
        shape = tuple(x.shape)
        if shape not in self.sessions:
            self.sessions[shape] = self.load(self.graph(shape, x))
        return torch.from_numpy(self.run(self.sessions[shape], x.numpy()))

    forward = __call__


class OnnxRuntimePSPNet(OnnxGraphPSPNet):
    """The folded fp32 network exported to ONNX and run by ONNX Runtime (module docstring),
    optionally statically quantised to int8 with calibration images."""

    backend = "onnxruntime"
    # the pools as two MatMuls: faster in ONNX Runtime than the Einsum `pspnet export` writes
    # (which exists for OpenVINO's NNCF int8; export.BinPool2d)
    pool_product = "matmul"

    def __init__(self, net: PSPNet, precision: str = "fp32", calibration: Iterable[torch.Tensor] | None = None,
                 threads: int | None = None, cache_dir: str | Path | None = None, factor_head: bool = True,
                 reduce_range: bool = False) -> None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise ConfigError("backend='onnxruntime' needs onnxruntime (a dependency of pspnet missing from "
                              "this environment): pip install onnx onnxruntime") from None
        super().__init__(net, precision, calibration, threads, cache_dir, factor_head, reduce_range)

    def load(self, path: Path) -> Any:
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def run(self, session: Any, x: np.ndarray) -> np.ndarray:
        return session.run(["logits"], {"image": x})[0]


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


def _calibrator_hook() -> tuple[Any, Any, Any] | None:
    """(ONNX Runtime's calibrator base class, its session-making method, the priority order), or None
    where this onnxruntime lacks one of them (or is not installed)."""
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import calibrate
    except ImportError:
        return None
    base = getattr(calibrate, "CalibraterBase", None)
    original = getattr(base, "create_inference_session", None)
    order = getattr(getattr(ort, "ExecutionOrder", None), "PRIORITY_BASED", None)
    return None if original is None or order is None else (base, original, order)


def calibration_frees_activations() -> bool:
    """Whether :func:`calibration_in_priority_order` can take effect with this onnxruntime."""
    return _calibrator_hook() is not None


@contextmanager
def calibration_in_priority_order() -> Iterator[bool]:
    """While in effect, ONNX Runtime's min/max calibration runs its graph in priority order; yields
    whether it could be set.

    The calibrator adds a ReduceMin and a ReduceMax after every activation and runs the graph in the
    default order, which puts those nodes last, so every activation stays alive until the end of the
    pass: about 1.5x the sum of the layer outputs (PSPNet-50: 2.9 GB peak at 473x473, a calculated 23 GB
    at 1024x2048). In priority order each activation is reduced and freed as the pass goes (1.7 GB and
    2.7 GB peak; the ranges, and so the int8 graph, are the same). The calibrator has no option for its
    session, so its session-making method is replaced for the duration, with the same settings
    (no graph optimisation, the same providers) plus the order. Two threads quantising at once may each
    restore the other's replacement; both behave alike, so the worst case is the order staying set."""
    hook = _calibrator_hook()
    if hook is None:
        yield False
        return
    import onnxruntime as ort
    base, original, order = hook

    def create_inference_session(self) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.execution_order = order
        self.infer_session = ort.InferenceSession(self.augmented_model_path, sess_options=options,
                                                  providers=getattr(self, "execution_providers", None))

    base.create_inference_session = create_inference_session
    try:
        yield True
    finally:
        base.create_inference_session = original


def _quantize_static(src: Path, dst: Path, calibration: Sequence[torch.Tensor], shape: tuple[int, ...], *,
                     op_types: Sequence[str] = ("Conv", "MaxPool", "Add", "Concat", "Relu"),
                     activations: str = "uint8", reduce_range: bool = False) -> None:
    """ONNX Runtime's static quantisation of ``src`` into ``dst`` (QDQ, per-channel symmetric int8
    weights, min/max calibration on ``calibration`` resized to ``shape`` and packed into its batches),
    every op of ``op_types`` but the classifier; activations ``uint8`` (asymmetric) or ``int8``
    (symmetric). ``reduce_range``: 7-bit weights, so that a CPU without VNNI, whose int8 products sum pairs
    into 16 bits (AVX2's ``vpmaddubsw``), cannot saturate."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    arrays = [c.numpy() for c in packed(calibration, shape)]
    graph = onnx.load(str(src))
    if _own_initializers(graph):
        src = dst.with_name(dst.stem + "_src.onnx")
        onnx.save(graph, str(src))
    convs = [n.name for n in graph.graph.node if n.op_type == "Conv"]
    keep_fp32 = convs[-1:]  # the classifier
    # the quantiser logs advice through the root logger (pre-processing, bias initializers): those
    # messages alone are held back, while it runs (QUANTISER_NOTICES)
    with hidden_records(QUANTISER_NOTICES) as (quiet,), calibration_in_priority_order():
        quantize_static(str(src), str(dst), _CalibrationReader(arrays), quant_format=QuantFormat.QDQ,
                        per_channel=True, weight_type=QuantType.QInt8, reduce_range=reduce_range,
                        activation_type=QuantType.QInt8 if activations == "int8" else QuantType.QUInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=keep_fp32,
                        op_types_to_quantize=list(op_types),
                        extra_options={"ActivationSymmetric": activations == "int8", "WeightSymmetric": True})
    if quiet.dropped:
        log.debug("onnxruntime quantiser: %d advisory messages hidden", quiet.dropped)


QUANTISER_NOTICES = {"": (r"^Please consider (to run )?pre-processing before quantization",
                          r"^Expected bias '.*' to be an initializer")}
"""What ONNX Runtime's ``quantize_static`` logs through the root logger on every call (logger name:
message regexes): advice to run its shape-inference pre-processing (the fixed-shape graph needs none)
and a note per bias the exporter left as a computed value (:func:`_own_initializers` handles
those); :func:`_quantize_static` hides exactly these."""
