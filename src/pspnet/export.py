"""Export a PSPNet to ONNX (dynamic batch, height and width) or TorchScript, and check the export.

The adaptive-pooling problem. The pyramid pooling module (Zhao et al. 2017, Sec. 3.3) pools the
feature map into ``b x b`` bins with ``AdaptiveAvgPool2d(b)``, bin ``i`` along an axis of length
``n`` covering ``[floor(i n / b), ceil((i + 1) n / b))``. ONNX has no adaptive pooling op:
PyTorch's TorchScript-based exporter refuses it when the input size is dynamic ("input size not
accessible"), and the dynamo exporter bakes the example's bin indices into the graph, so the file
fails (or is wrong) at other sizes. Here each pool is replaced, for export only, by an exact
formulation computed from the runtime shape: the bin edges above give an averaging matrix
``P_n`` (``b x n``, ``1 / bin length`` inside bin ``i``) and ``pool(x) = P_h @ x @ P_w^T`` (one
Einsum; averaging over a rectangle is separable). Max pooling (``pool="max"``) uses the same
bin masks with a masked max. One exported file then works for every input size and matches
PyTorch to float rounding; :func:`check_onnx` measures that on several sizes.

The exported graph takes the ImageNet-normalised float image ``N x 3 x H x W`` (like the
PyTorch model; mean/std are stored in the file's metadata) and returns logits ``N x C x H x W``.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize
from .errors import PSPNetError
from .files import write_output
from .models.pspnet import PSPNet
from .models.weights import unwrap

log = logging.getLogger("pspnet.export")

__all__ = ["BinPool2d", "make_exportable", "export_onnx", "export_torchscript", "check_onnx", "check_torchscript",
           "check_images", "format_check", "DEFAULT_CHECK_SIZES", "EXPORTER_NOTICES", "hidden_warnings",
           "hidden_records"]

DEFAULT_CHECK_SIZES: tuple[tuple[int, int], ...] = ((97, 129), (240, 320), (361, 481))
MAX_ABS_TOL = 1e-3
MIN_AGREEMENT = 0.999


EXPORTER_NOTICES: tuple[tuple[type[Warning], str], ...] = (
    (DeprecationWarning, r"You are using the legacy TorchScript-based ONNX export"),
    (DeprecationWarning, r"The feature will be removed\. Please remove usage of this function"),
    (DeprecationWarning, r"`torch\.jit\.trace(_method)?` is deprecated"),
    # the input checks' Python conditions, constant for the traced shape; the exported graph is
    # size-independent all the same (check_onnx / check_torchscript measure it at other sizes)
    (torch.jit.TracerWarning, r"Converting a tensor to a Python boolean might cause the trace to be incorrect"),
    # BinPool2d's max form: its -inf fill, a constant by design
    (torch.jit.TracerWarning, r"torch\.tensor results are registered as constants in the trace"),
)
"""The notices torch's ONNX exporter (``dynamo=False``) and ``torch.jit.trace`` print for every
export of a PSPNet (category, message regex): the exporter's and TorchScript's deprecation and the
tracer's notes on Python conditions and on the max pool's constant fill. Hidden by
:func:`hidden_warnings` while those calls run."""


@contextmanager
def hidden_warnings(notices: Sequence[tuple[type[Warning], str]] = EXPORTER_NOTICES) -> Iterator[None]:
    """While the block runs, ignore exactly the warnings ``notices`` names (category, message regex
    matched from the message's start); every other warning, of any library, is shown as before, and
    the filters are restored when the block ends."""
    with warnings.catch_warnings():
        for category, message in notices:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


class _DropNamedRecords(logging.Filter):
    """Drops the records below ERROR whose message matches one of ``patterns``; counts them."""

    def __init__(self, patterns: Sequence[str]) -> None:
        super().__init__()
        self.patterns = [re.compile(p) for p in patterns]
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR and any(p.search(record.getMessage()) for p in self.patterns):
            self.dropped += 1
            return False
        return True


@contextmanager
def hidden_records(notices: Mapping[str, Sequence[str]]) -> Iterator[list[_DropNamedRecords]]:
    """While the block runs, drop the log records below ERROR of the named loggers (``""``: the root
    logger) whose message matches one of that logger's regexes; a logger's filter sees only what is
    logged through that very logger, so other loggers' records, and every other message of these,
    get through. The filters are removed when the block ends; yields them (``.dropped`` counts)."""
    added = [(logging.getLogger(name or None), _DropNamedRecords(patterns)) for name, patterns in notices.items()]
    for logger, quiet in added:
        logger.addFilter(quiet)
    try:
        yield [quiet for _, quiet in added]
    finally:
        for logger, quiet in added:
            logger.removeFilter(quiet)


class BinPool2d(nn.Module):
    """``adaptive_{avg,max}_pool2d(x, bins)`` written with ops that ONNX exports for dynamic sizes.

    ``product`` (average pooling): ``"einsum"``, one Einsum, what ``pspnet export`` writes: NNCF's
    default int8 quantisation puts int8 on both inputs of a MatMul, and OpenVINO on an AMX CPU then
    finds no bf16 kernel for it ("No suitable implementations"), while an Einsum stays float and
    compiles everywhere; ``"matmul"``, for graphs exported at one fixed shape (the ONNX Runtime and
    OpenVINO backends' own): where the bins divide the map (the release's 473 and 713 crops give 60
    and 90) a plain average pool, which reads the engines' channels-last layout as it is, else two
    MatMuls, which ONNX Runtime runs faster than the Einsum (docs/benchmarks.md, pspnet 0.7).
    """

    def __init__(self, bins: int, mode: str = "avg", product: str = "einsum") -> None:
        super().__init__()
        if mode not in ("avg", "max"):
            raise ValueError(f"mode must be 'avg' or 'max', got {mode!r}")
        if product not in ("einsum", "matmul"):
            raise ValueError(f"product must be 'einsum' or 'matmul', got {product!r}")
        self.bins, self.mode, self.product = int(bins), mode, product

    def _mask(self, n, ref: torch.Tensor) -> torch.Tensor:
        """``bins x n`` bool: element ``k`` of the axis lies in bin ``i``."""
        i = torch.arange(self.bins, device=ref.device)
        start = torch.div(i * n, self.bins, rounding_mode="floor")
        end = torch.div((i + 1) * n + self.bins - 1, self.bins, rounding_mode="floor")
        k = torch.arange(n, device=ref.device)
        return (k.unsqueeze(0) >= start.unsqueeze(1)) & (k.unsqueeze(0) < end.unsqueeze(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "avg" and self.product == "matmul":
            h, w = int(x.shape[-2]), int(x.shape[-1])  # constants of a fixed-shape graph
            if h % self.bins == 0 and w % self.bins == 0:
                return F.avg_pool2d(x, (h // self.bins, w // self.bins))
        mh, mw = self._mask(x.shape[-2], x), self._mask(x.shape[-1], x)
        if self.mode == "avg":
            ph = mh.to(x.dtype) / mh.sum(1, keepdim=True).to(x.dtype)
            pw = mw.to(x.dtype) / mw.sum(1, keepdim=True).to(x.dtype)
            if self.product == "matmul":
                return torch.matmul(torch.matmul(ph, x), pw.transpose(0, 1))
            return torch.einsum("bh,nchw,kw->ncbk", ph, x, pw)
        neg = torch.tensor(float("-inf"), dtype=x.dtype, device=x.device)
        # rows: N x C x b x W  (max over H within each row bin), then columns: N x C x b x b
        rows = torch.where(mh.view(1, 1, self.bins, -1, 1), x.unsqueeze(2), neg).amax(3)
        return torch.where(mw.view(1, 1, 1, self.bins, -1), rows.unsqueeze(3), neg).amax(4)

    def extra_repr(self) -> str:
        return f"bins={self.bins}, mode={self.mode}, product={self.product}"


def _pspnet_copy(model: nn.Module) -> PSPNet:
    """A copy in eval mode of the PSPNet inside ``model`` (DDP / torch.compile wrappers removed)."""
    net = unwrap(model)
    if not isinstance(net, PSPNet):
        raise PSPNetError(f"export expects a pspnet.models.PSPNet, got {type(net).__name__}")
    return copy.deepcopy(net).eval()


def make_exportable(model: nn.Module, pool_product: str = "einsum") -> PSPNet:
    """A copy of ``model`` in eval mode whose pyramid pools are :class:`BinPool2d` (same weights;
    ``pool_product`` as its ``product``)."""
    net = _pspnet_copy(model)
    for branch in net.ppm.features:
        pool = branch[0]
        if isinstance(pool, nn.AdaptiveAvgPool2d):
            branch[0] = BinPool2d(_bins(pool.output_size), "avg", pool_product)
        elif isinstance(pool, nn.AdaptiveMaxPool2d):
            branch[0] = BinPool2d(_bins(pool.output_size), "max", pool_product)
    return net


def _bins(output_size) -> int:
    if isinstance(output_size, (tuple, list)):
        if len(set(output_size)) != 1 or output_size[0] is None:
            raise PSPNetError(f"only square pyramid bins are supported, got {output_size!r}")
        output_size = output_size[0]
    return int(output_size)


def _metadata(model: PSPNet, class_names=None, palette=None) -> dict[str, str]:
    meta = {"format": "pspnet-onnx-v1", "config": json.dumps(model.config.to_dict()),
            "input": "image: float32 N x 3 x H x W, RGB, (x / 255 - mean) / std (ImageNet)",
            "output": "logits: float32 N x C x H x W", "mean": json.dumps(list(IMAGENET_MEAN)),
            "std": json.dumps(list(IMAGENET_STD))}
    if class_names is not None:
        meta["class_names"] = json.dumps(list(class_names))
    if palette is not None:
        meta["palette"] = json.dumps([list(map(int, c)) for c in palette])
    return meta


def export_onnx(model: nn.Module, path: str | Path, *, class_names: Sequence[str] | None = None, palette=None,
                opset: int = 17, example_size: tuple[int, int] = (97, 129), dynamo: bool = False) -> Path:
    """Write an ONNX file with dynamic batch, height and width (see the module docstring).

    ``dynamo=False`` uses the TorchScript-based exporter (fast); ``dynamo=True`` the
    ``torch.export``-based one (slower, needs onnxscript). Both produce a size-independent graph.
    """
    try:
        import onnx
    except ImportError:
        raise PSPNetError("ONNX export needs the onnx package (a dependency of pspnet missing from "
                          "this environment): pip install onnx onnxruntime") from None
    net = make_exportable(model)
    device = next(net.parameters()).device
    example = torch.zeros(1, 3, *example_size, device=device)
    path = Path(path)

    def write(tmp: str) -> None:  # atomically: a full disk leaves no truncated .onnx
        with hidden_warnings():  # the exporter's deprecation and tracer notices, no other warning
            if dynamo:
                dim = torch.export.Dim
                torch.onnx.export(net, (example,), tmp, input_names=["image"], output_names=["logits"],
                                  opset_version=max(opset, 18), dynamo=True,
                                  dynamic_shapes={"x": {0: dim("batch"), 2: dim("height", min=net.min_input_size),
                                                        3: dim("width", min=net.min_input_size)}})
            else:
                torch.onnx.export(net, (example,), tmp, input_names=["image"], output_names=["logits"],
                                  opset_version=opset, dynamo=False, do_constant_folding=True,
                                  dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                                "logits": {0: "batch", 2: "height", 3: "width"}})
        proto = onnx.load(tmp)
        del proto.metadata_props[:]
        for k, v in _metadata(net, class_names, palette).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, v
        onnx.save(proto, tmp)

    return write_output(path, write)


def export_torchscript(model: nn.Module, path: str | Path, *, class_names: Sequence[str] | None = None,
                       palette=None, example_size: tuple[int, int] = (97, 129)) -> Path:
    """Trace the model to TorchScript (any input size: shapes are traced, not baked in).

    The metadata is stored as the archive's extra file ``pspnet.json``. ``torch.jit`` is deprecated
    in recent PyTorch but still loads everywhere ``torch.jit.load`` exists (incl. C++ libtorch).
    """
    net = _pspnet_copy(model)
    device = next(net.parameters()).device
    example = torch.zeros(1, 3, *example_size, device=device)
    with hidden_warnings(), torch.no_grad():  # TorchScript's deprecation and the tracer's notices only
        traced = torch.jit.trace(net, example, check_trace=False)
    extra = {"pspnet.json": json.dumps(_metadata(net, class_names, palette))}
    return write_output(Path(path), lambda tmp: torch.jit.save(traced, tmp, _extra_files=extra))


def check_images(sizes: Sequence[tuple[int, int]], batch: int = 1, seed: int = 0) -> list[torch.Tensor]:
    """Smooth random uint8 test images (low-frequency noise, like natural images), one batch per size."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for h, w in sizes:
        coarse = torch.rand(batch, 3, max(2, h // 16), max(2, w // 16), generator=g) * 255
        fine = F.interpolate(coarse, (h, w), mode="bilinear", align_corners=False)
        out.append((fine + torch.rand(batch, 3, h, w, generator=g) * 20).clamp(0, 255).round().to(torch.uint8))
    return out


def _compare(name: str, reference: torch.Tensor, other: torch.Tensor) -> dict[str, Any]:
    diff = float((reference - other).abs().max())
    agree = float((reference.argmax(1) == other.argmax(1)).double().mean())
    ok = diff < MAX_ABS_TOL and agree > MIN_AGREEMENT
    return {"size": list(reference.shape[-2:]), "backend": name, "max_abs_diff": diff, "argmax_agreement": agree,
            "max_abs_logit": float(reference.abs().max()), "ok": ok}


@torch.no_grad()
def check_onnx(model: nn.Module, path: str | Path, sizes: Sequence[tuple[int, int]] = DEFAULT_CHECK_SIZES,
               batch: int = 1, seed: int = 0) -> list[dict[str, Any]]:
    """Run the ONNX file with ONNX Runtime (CPU) and the original PyTorch model on every size; per size
    the max abs logit difference and the argmax agreement (pass: < 1e-3 and > 99.9%)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise PSPNetError("--check of an ONNX export needs onnxruntime (a dependency of pspnet missing from "
                          "this environment): pip install onnx onnxruntime") from None
    net = unwrap(model).eval()
    device = next(net.parameters()).device
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    results = []
    for images in check_images(sizes, batch, seed):
        x = normalize(images)
        ref = net(x.to(device)).float().cpu()
        got = torch.from_numpy(sess.run(None, {name: x.numpy()})[0])
        results.append(_compare("onnxruntime", ref, got))
    return results


@torch.no_grad()
def check_torchscript(model: nn.Module, path: str | Path, sizes: Sequence[tuple[int, int]] = DEFAULT_CHECK_SIZES,
                      batch: int = 1, seed: int = 0) -> list[dict[str, Any]]:
    """Load the TorchScript file and compare it with the PyTorch model on every size (as :func:`check_onnx`)."""
    net = unwrap(model).eval()
    device = next(net.parameters()).device
    loaded = torch.jit.load(str(path), map_location=device)
    results = []
    for images in check_images(sizes, batch, seed):
        x = normalize(images).to(device)
        results.append(_compare("torchscript", net(x).float().cpu(), loaded(x).float().cpu()))
    return results


def format_check(results: Sequence[dict[str, Any]]) -> str:
    lines = [f"{'size (HxW)':>12}  {'max |diff|':>11}  {'argmax agree':>12}  {'max |logit|':>11}  ok"]
    for r in results:
        h, w = r["size"]
        lines.append(f"{f'{h}x{w}':>12}  {r['max_abs_diff']:11.2e}  {r['argmax_agreement'] * 100:11.4f}%  "
                     f"{r.get('max_abs_logit', float('nan')):11.2f}  {'yes' if r['ok'] else 'NO'}")
    return "\n".join(lines)
