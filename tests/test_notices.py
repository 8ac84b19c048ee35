"""Other libraries' notices that pspnet holds back (the ONNX exporter's and TorchScript's deprecations,
ONNX Runtime's quantiser advice, torchao's CUDA libraries on a CPU-only torch) are hidden exactly:
only those messages, only while the call that makes them runs. Another library's warning or log
line emitted during the call gets through, and so does the same notice after it.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import warnings

import pytest
import torch

from pspnet.export import EXPORTER_NOTICES, export_onnx, export_torchscript, hidden_records, make_exportable
from pspnet.inference import int8
from pspnet.inference import onnxruntime as ort_backend
from pspnet.inference.factored_head import FactoredPSPNet
from pspnet.inference.folding import fold_batchnorm

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
FOREIGN = "another library: a warning of its own"


def _is_exporter_notice(w: warnings.WarningMessage) -> bool:
    return any(issubclass(w.category, c) and re.match(m, str(w.message)) for c, m in EXPORTER_NOTICES)


def _with_a_foreign_notice(monkeypatch, owner, name: str) -> None:
    """``owner.name`` first warns and logs as another library would, then does its real work."""
    real = getattr(owner, name)

    def noisy(*args, **kwargs):
        warnings.warn(FOREIGN, UserWarning, stacklevel=2)
        logging.getLogger("otherlib").warning(FOREIGN)
        logging.warning(FOREIGN)  # through the root logger, as ONNX Runtime's quantiser logs
        return real(*args, **kwargs)
    monkeypatch.setattr(owner, name, noisy)


def _after_the_call_a_notice_gets_through() -> None:
    """The filters are gone once the call returns: the very notice they hid is shown again."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        warnings.warn("Converting a tensor to a Python boolean might cause the trace to be incorrect",
                      torch.jit.TracerWarning, stacklevel=2)
    assert len(seen) == 1


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_hides_its_own_notices_and_nothing_else(tmp_path, tiny_pspnet, monkeypatch, caplog, fmt):
    model = tiny_pspnet(3, aux=False).eval()
    if fmt == "onnx":
        owner, name, export, path = torch.onnx, "export", export_onnx, tmp_path / "m.onnx"
    else:
        owner, name, export, path = torch.jit, "trace", export_torchscript, tmp_path / "m.pt"
    with warnings.catch_warnings(record=True) as unhidden:  # the notices are real: the test checks something
        warnings.simplefilter("always")
        with torch.no_grad():
            if fmt == "onnx":
                torch.onnx.export(make_exportable(model), (torch.zeros(1, 3, 64, 64),), str(tmp_path / "raw.onnx"),
                                  dynamo=False)
            else:
                torch.jit.trace(model, torch.zeros(1, 3, 64, 64), check_trace=False)
    assert any(_is_exporter_notice(w) for w in unhidden), [str(w.message)[:80] for w in unhidden]
    _with_a_foreign_notice(monkeypatch, owner, name)
    with warnings.catch_warnings(record=True) as seen, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        export(model, path)
    assert path.is_file()
    # torch.jit.save's deprecation (after the trace, never hidden) is shown as before
    shown = [str(w.message) for w in seen if not str(w.message).startswith("`torch.jit.save` is deprecated")]
    assert shown == [FOREIGN]
    assert [r.name for r in caplog.records if r.getMessage() == FOREIGN] == ["otherlib", "root"]
    _after_the_call_a_notice_gets_through()


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed")
def test_onnxruntime_backend_hides_only_the_exporter_and_quantiser_notices(tmp_path, tiny_pspnet, monkeypatch,
                                                                          caplog):
    import onnxruntime.quantization as ortq
    x = torch.randn(1, 3, 48, 64)
    src, dst = tmp_path / "m.onnx", tmp_path / "m_int8.onnx"
    _with_a_foreign_notice(monkeypatch, torch.onnx, "export")
    net = make_exportable(fold_batchnorm(tiny_pspnet(4).eval()))
    for module in (net, FactoredPSPNet(net).eval()):  # the factored head's shape arithmetic: constants here
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            ort_backend._export_onnx(module, x, src)
        assert [str(w.message) for w in seen] == [FOREIGN]
    _with_a_foreign_notice(monkeypatch, ortq, "quantize_static")
    root_filters = list(logging.getLogger().filters)
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        ort_backend._quantize_static(src, dst, [x], tuple(x.shape))
    assert FOREIGN in [str(w.message) for w in seen]
    assert dst.is_file()
    messages = [(r.name, r.getMessage()) for r in caplog.records]
    assert ("otherlib", FOREIGN) in messages and ("root", FOREIGN) in messages  # another library's, during the call
    assert not [m for m in messages if "pre-processing" in m[1] or "to be an initializer" in m[1]], messages
    hidden = [m for n, m in messages if n == "pspnet.fast" and "advisory messages hidden" in m]
    assert hidden, "the quantiser gave no advice to hide: this test checks nothing"
    assert logging.getLogger().filters == root_filters  # nothing left on the root logger
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # after the call, the same advice is shown again
        logging.warning("Please consider pre-processing before quantization.")
    assert len(caplog.records) == 1


def test_torchao_import_notices_are_hidden_by_name_and_message_only(caplog):
    notices = int8.TORCHAO_IMPORT_NOTICES
    lib = "/site-packages/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so"
    with caplog.at_level(logging.DEBUG):
        with hidden_records(notices) as filters:
            logging.getLogger("torchao").warning("Failed to load %s: Could not load this library", lib)
            logging.getLogger("torchao.kernel.intmm").warning("Warning: Detected no triton, on systems without "
                                                              "Triton certain kernels will not work")
            logging.getLogger("torchao").warning("torchao: a real problem with int8")  # another message
            logging.getLogger("torchao").error("Failed to load %s: an error is never hidden", lib)
            logging.getLogger("otherlib").warning("Detected no triton")  # another library's logger
        logging.getLogger("torchao").warning("Failed to load %s: after the import it is shown", lib)
    assert sum(f.dropped for f in filters) == 2
    assert [(r.name, r.levelname) for r in caplog.records] == [
        ("torchao", "WARNING"), ("torchao", "ERROR"), ("otherlib", "WARNING"), ("torchao", "WARNING")]
    assert all(not logging.getLogger(name).filters for name in notices)
