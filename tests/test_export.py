"""ONNX export with dynamic height/width (exact adaptive pooling) and TorchScript export, checked
against PyTorch on several input sizes from one exported file."""

import json

import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from pspnet.cli import main
from pspnet.export import (
    BinPool2d,
    check_onnx,
    check_torchscript,
    export_onnx,
    export_torchscript,
    format_check,
    make_exportable,
)
from pspnet.models.weights import save_weights

SIZES = [(33, 47), (64, 64), (81, 19)]  # odd, square, tall-and-narrow


def _nontrivial(model):
    """``model`` in eval mode, with non-trivial BN statistics and logits of order 1-10."""
    model.eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
        model.cls[-1].weight.normal_(0, 0.3)
    return model


@given(h=st.integers(1, 40), w=st.integers(1, 40), b=st.sampled_from([1, 2, 3, 6]))
@settings(max_examples=150, deadline=None)
def test_bin_pool_equals_adaptive_pool(h, w, b):
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    for product in ("einsum", "matmul"):
        torch.testing.assert_close(BinPool2d(b, "avg", product)(x), F.adaptive_avg_pool2d(x, b), rtol=0, atol=1e-12)
    assert torch.equal(BinPool2d(b, "max")(x), F.adaptive_max_pool2d(x, b))


def test_make_exportable_keeps_the_function(tiny_pspnet):
    model = _nontrivial(tiny_pspnet(4, aux=False))
    exp = make_exportable(model)
    assert all(isinstance(br[0], BinPool2d) for br in exp.ppm.features)
    assert all(isinstance(br[0], torch.nn.AdaptiveAvgPool2d) for br in model.ppm.features)  # original untouched
    x = torch.randn(1, 3, 57, 43)
    with torch.no_grad():
        torch.testing.assert_close(exp(x), model(x), rtol=0, atol=1e-4)


@pytest.mark.parametrize("pool", ["avg", "max"])
def test_onnx_one_file_any_size(tmp_path, pool, tiny_pspnet):
    model = _nontrivial(tiny_pspnet(4, aux=False, pool=pool))
    path = export_onnx(model, tmp_path / "m.onnx", class_names=["a", "b", "c", "d"], example_size=(64, 80))
    inputs = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in inputs] == ["batch", 3, "height", "width"]
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["class_names"]) == ["a", "b", "c", "d"] and json.loads(meta["config"])["pool"] == pool
    results = check_onnx(model, path, SIZES, batch=2)
    print(format_check(results))
    assert [r["size"] for r in results] == [list(s) for s in SIZES]
    for r in results:
        assert r["max_abs_diff"] < 1e-3 and r["argmax_agreement"] > 0.999 and r["ok"], r
        assert r["max_abs_logit"] > 5  # logits large enough for the tolerance to mean something


def test_onnx_pooling_has_no_matmul(tmp_path, tiny_pspnet):
    """The pyramid pools export as Einsum, not MatMul: NNCF's default int8 quantisation quantises both
    inputs of every MatMul, and OpenVINO on an AMX CPU then has no kernel for the graph."""
    path = export_onnx(tiny_pspnet(4, aux=False), tmp_path / "m.onnx", example_size=(64, 80))
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "MatMul" not in ops and ops.count("Einsum") == 4, sorted(set(ops))


@pytest.mark.parametrize("size,pools,matmuls", [((6, 12), 1, 0), ((5, 12), 0, 2)])
def test_fixed_shape_pool_is_an_average_pool_where_the_bins_divide_the_map(tmp_path, size, pools, matmuls):
    """The fixed-shape graphs' form (ONNX Runtime's and OpenVINO's own): an AveragePool, which the engines
    run on their channels-last layout, where the bins divide the map, the two MatMuls where they do not."""
    path = tmp_path / "pool.onnx"
    x = torch.randn(1, 4, *size)
    torch.onnx.export(BinPool2d(3, "avg", "matmul"), (x,), str(path), opset_version=17, dynamo=False)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert (ops.count("AveragePool"), ops.count("MatMul")) == (pools, matmuls), ops


def test_onnx_export_compiles_and_matches_in_openvino(tmp_path, trained_tiny):
    """The file `pspnet export` writes runs in OpenVINO's CPU plugin, reshaped to a static size (its
    fastest form), at f32 and, on CPUs with native bf16, bf16 keeping the product's 99.5% of the fp32
    labels (NNCF int8 is checked by hand with bench/openvino_compare.py: NNCF is not a test
    dependency). The trained tiny model on its held-out scenes: a random-weight model's near-ties
    would make the bf16 bound either fail honestly or, set low enough to pass, catch nothing."""
    ov = pytest.importorskip("openvino")
    from pspnet import capability
    from pspnet.inference.auto import AGREEMENT_BOUND
    model, images, _ = trained_tiny
    path = export_onnx(model, tmp_path / "m.onnx")
    x = images[12:]
    with torch.no_grad():
        ref = model(x)
    core = ov.Core()
    for hint in ["f32"] + (["bf16"] if capability.real_capabilities().check("bf16", "openvino").native else []):
        net = core.read_model(str(path))
        net.reshape({net.inputs[0].get_any_name(): list(x.shape)})
        compiled = core.compile_model(net, "CPU", {"INFERENCE_PRECISION_HINT": hint})
        out = torch.from_numpy(compiled({0: x.numpy()})[compiled.output(0)].copy())
        assert out.shape == ref.shape
        if hint == "f32":
            assert float((out - ref).abs().max()) < 1e-3 * float(ref.abs().max())
        else:
            assert float((out.argmax(1) == ref.argmax(1)).float().mean()) >= AGREEMENT_BOUND


def test_torchscript_any_size(tmp_path, tiny_pspnet):
    model = _nontrivial(tiny_pspnet(4, aux=False))
    path = export_torchscript(model, tmp_path / "m.pt", class_names=["a", "b", "c", "d"])
    results = check_torchscript(model, path, SIZES)
    assert all(r["ok"] and r["max_abs_diff"] < 1e-4 for r in results), results
    extra = {"pspnet.json": ""}
    torch.jit.load(str(path), _extra_files=extra)
    assert json.loads(json.loads(extra["pspnet.json"])["class_names"]) == ["a", "b", "c", "d"]


def test_check_detects_a_wrong_export(tmp_path, tiny_pspnet):
    model = _nontrivial(tiny_pspnet(4, aux=False))
    path = export_onnx(model, tmp_path / "m.onnx")
    other = _nontrivial(tiny_pspnet(4, aux=False))
    with torch.no_grad():
        other.cls[-1].bias[0] += 5.0  # a different model must fail the check
    results = check_onnx(other, path, SIZES[:1])
    assert not results[0]["ok"] and results[0]["max_abs_diff"] > 1


def test_export_command(tmp_path, capsys, tiny_pspnet):
    model = _nontrivial(tiny_pspnet(4, aux=False))
    w = tmp_path / "w.safetensors"
    save_weights(model, w, ["a", "b", "c", "d"])
    rc = main(["export", "--weights", str(w), "--format", "onnx", "--out", str(tmp_path / "m.onnx"), "--check",
               "--check-sizes", "33x47,64x64,81x19"])
    out = capsys.readouterr().out
    assert rc == 0 and "check passed" in out and "81x19" in out
    rc = main(["export", "--weights", str(w), "--format", "torchscript", "--out", str(tmp_path / "m.pt"), "--check",
               "--check-sizes", "40x40"])
    assert rc == 0 and "check passed" in capsys.readouterr().out
    assert main(["export", "--weights", str(w), "--out", str(tmp_path / "x.onnx"), "--check",
                 "--check-sizes", "40by40"]) == 2
