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
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..export import make_exportable
from ..models.pspnet import PSPNet, check_image_batch
from .calibration import calibration_batches, or_first_batch, resized
from .factored_head import FactoredPSPNet

log = logging.getLogger("pspnet.fast")

__all__ = ["OnnxRuntimePSPNet"]


def _export_onnx(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Export a fixed-shape fp32 graph: the pooling matrices of this shape fold into constants."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
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


class OnnxRuntimePSPNet:
    """The folded fp32 network exported to ONNX and run by ONNX Runtime (module docstring),
    optionally statically quantised to int8 with calibration images. With ``factor_head`` the PPM
    and head convolution are exported in their factored form
    (:class:`~pspnet.inference.factored_head.FactoredPSPNet`)."""

    backend = "onnxruntime"

    def __init__(self, net: PSPNet, precision: str = "fp32", calibration: Iterable[torch.Tensor] | None = None,
                 threads: int | None = None, cache_dir: str | Path | None = None, factor_head: bool = True) -> None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise ConfigError("backend='onnxruntime' needs onnxruntime (a dependency of pspnet missing from "
                              "this environment): pip install onnx onnxruntime") from None
        if precision not in ("fp32", "int8"):
            raise ConfigError(f"the onnxruntime backend runs fp32 or int8, got {precision!r} "
                              f"(bf16 runs with backend='torch')")
        self.config, self.precision = net.config, precision
        # not ``.module``: that name marks a DDP-style wrapper to ``pspnet.models.weights.unwrap``
        # the pools as two MatMuls: faster in ONNX Runtime than the Einsum `pspnet export` writes
        # (which exists for OpenVINO's NNCF int8; export.BinPool2d)
        self.exportable = make_exportable(net, pool_product="matmul").cpu().float()
        self.factored = factor_head and FactoredPSPNet.applies(self.exportable)
        if self.factored:
            self.exportable = FactoredPSPNet(self.exportable).eval()
        self.calibration = calibration_batches(calibration)
        self.threads = threads or torch.get_num_threads()
        self._tmp = tempfile.TemporaryDirectory(prefix="pspnet-onnx-") if cache_dir is None else None
        self.cache_dir = Path(cache_dir) if cache_dir is not None else Path(self._tmp.name)
        self.sessions: dict[tuple[int, ...], Any] = {}
        self.device = torch.device("cpu")

    def eval(self) -> OnnxRuntimePSPNet:
        return self

    def _session(self, shape: tuple[int, ...], example: torch.Tensor):
        import onnxruntime as ort
        if shape in self.sessions:
            return self.sessions[shape]
        tag = "x".join(str(s) for s in shape)
        fp32_path = self.cache_dir / f"pspnet_{tag}.onnx"
        _export_onnx(self.exportable, example.float().contiguous(), fp32_path)
        path = fp32_path
        if self.precision == "int8":
            path = self.cache_dir / f"pspnet_{tag}_int8.onnx"
            _quantize_static(fp32_path, path, or_first_batch(self.calibration, example), shape)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.sessions[shape] = sess
        return sess

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x, self.config.output_stride)
        x = x.detach().float().cpu().contiguous()
        sess = self._session(tuple(x.shape), x)
        out = sess.run(["logits"], {"image": x.numpy()})[0]
        return torch.from_numpy(out)

    forward = __call__


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
    arrays = [c.numpy() for c in resized(calibration, shape)]
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
