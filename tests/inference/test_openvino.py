"""The OpenVINO backend (pspnet.inference.openvino): it computes what the model computes, its int8 is
quantised for real with the placement OpenVINO runs fast, and it is refused clearly without OpenVINO.

Tiny models only; no timing assertions. OpenVINO is optional (the ``dev`` extras install it).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from pspnet import capability
from pspnet.errors import ConfigError
from pspnet.inference import openvino as ov_backend
from pspnet.inference.auto import AGREEMENT_BOUND
from pspnet.inference.prepare import argmax_agreement, prepare_for_inference

needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                    reason="OpenVINO not installed (pip install \"pspnet[openvino]\")")


@needs_openvino
def test_openvino_fp32_matches_torch(trained_tiny):
    model, images, _ = trained_tiny
    for factor_head in (True, False):
        ov = prepare_for_inference(model, "fp32", backend="openvino", factor_head=factor_head)
        assert (ov.backend, ov.precision, ov.factored) == ("openvino", "fp32", factor_head)
        with torch.no_grad():
            ref = model(images[:3])
        out = ov(images[:3])
        assert out.shape == ref.shape and out.dtype == torch.float32
        assert float((out - ref).abs().max() / ref.abs().max()) < 1e-4
        small = images[:1, :, :48, :56]  # another shape: another compiled graph
        with torch.no_grad():
            torch.testing.assert_close(ov(small), model(small), rtol=1e-3, atol=1e-3)
        assert len(ov.sessions) == 2


@needs_openvino
def test_openvino_bf16_keeps_the_labels(trained_tiny):
    if not capability.real_capabilities().check("bf16", "openvino").native:
        pytest.skip("no native bf16 in OpenVINO on this CPU")
    model, images, _ = trained_tiny
    ov = prepare_for_inference(model, "bf16", backend="openvino")
    with torch.no_grad():
        ref = model(images)
    out = ov(images)
    assert not torch.allclose(out, ref, atol=1e-5)  # bf16 for real
    assert argmax_agreement(out, ref) >= AGREEMENT_BOUND


@needs_openvino
def test_openvino_int8_quantises_the_convolutions_symmetrically(trained_tiny):
    import onnx
    from onnx import numpy_helper
    model, images, _ = trained_tiny
    q = prepare_for_inference(model, "int8", backend="openvino", calibration=[images[:12]])
    with torch.no_grad():
        ref = model(images[12:])
    out = q(images[12:])
    assert q.precision == "int8" and out.shape == ref.shape
    assert not torch.allclose(out, ref, atol=1e-4)  # quantised for real
    assert argmax_agreement(out, ref) >= AGREEMENT_BOUND  # the contract; measured 99.87% on a Zen 4
    graph = onnx.load(str(next(q.cache_dir.glob("*_int8.onnx")))).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    # each convolution but the classifier reads a dequantised input; the classifier reads fp32
    assert all(producers[c.input[0]].op_type == "DequantizeLinear" for c in convs[:-1])
    assert producers.get(convs[-1].input[0]) is None or producers[convs[-1].input[0]].op_type != "DequantizeLinear"
    # only the convolutions' inputs and outputs are quantised (OpenVINO fuses those into its int8
    # convolutions; quantising Add/Relu/Concat of their own ran slower), and never the classifier's output
    readers: dict[str, set[str]] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, set()).add(n.op_type)
    dequantised_of = {producers[d.input[0]].input[0]: d.output[0] for d in graph.node
                      if d.op_type == "DequantizeLinear" and d.input[0] in producers}  # tensor -> its Q -> DQ
    quantised = [n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"]
    assert quantised and all(getattr(producers.get(t), "op_type", None) == "Conv"
                             or "Conv" in readers.get(dequantised_of[t], set()) for t in quantised)
    assert convs[-1].output[0] not in quantised
    # symmetric int8 activations: signed, zero point 0
    zero_points = [inits[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear"]
    assert zero_points and all(z.dtype.name == "int8" and not z.any() for z in zero_points)


def test_openvino_backend_refuses_clearly(tiny_pspnet, monkeypatch):
    net = tiny_pspnet(3).eval()
    monkeypatch.setattr(ov_backend, "openvino_version", lambda: None)
    with pytest.raises(ConfigError, match=r"pip install \"pspnet\[openvino\]\""):
        prepare_for_inference(net, "fp32", backend="openvino")
    monkeypatch.setattr(ov_backend, "openvino_version", lambda: "2026.0")
    with pytest.raises(ConfigError, match="openvino backend runs fp32 or bf16 or int8, got 'fp16'"):
        ov_backend.OpenVinoPSPNet(net, "fp16")
