"""Checks that hold on every CPU kind and that CI also runs on an emulated AVX2-only CPU
(``../shared/tools/avx2-only .venv/bin/python -m pytest tests/cpu_kinds``, with ``PSPNET_EXPECT_ISA=AVX2``
so that a run where the emulation did not take fails instead of passing on the host's AVX-512).

Tiny models and 32x32 inputs: under emulation every forward pass is 10-50x slower than native.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from pspnet import capability
from pspnet.cli import main
from pspnet.inference.prepare import prepare_for_inference
from pspnet.models.weights import save_weights

EXPECT_ENV = "PSPNET_EXPECT_ISA"


@pytest.fixture(autouse=True)
def _real_cpu(monkeypatch):
    monkeypatch.delenv(capability.SIMULATE_ENV, raising=False)


def test_the_answers_come_from_the_runtime():
    caps = capability.capabilities()
    assert caps.facts.isa == torch.backends.cpu.get_cpu_capability()
    assert caps.facts.mkldnn_bf16 == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert caps.check("fp32").runs and caps.check("fp32").native
    expected = os.environ.get(EXPECT_ENV)
    if expected:  # the emulated CPU really is the one asked for
        assert caps.facts.isa == expected
    if caps.facts.isa == "AVX2":  # no AVX-512: PyTorch refuses bf16 convolutions, int8 has no VNNI
        bf16 = caps.check("bf16")
        assert not bf16.runs and "no bf16 convolution" in bf16.why
        int8 = caps.check("int8", "onnxruntime")
        assert int8.runs and not int8.native and "7 bits" in int8.why


def test_pspnet_info_reports_what_runs(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    for p in ("fp32", "bf16", "int8"):
        assert isinstance(info["precisions"][p]["runs"], bool)
    assert info["precisions"]["fp32"]["runs"] is True
    bf16 = capability.check("bf16")
    assert info["precisions"]["bf16"]["backends"]["torch"]["runs"] is bf16.runs
    if not bf16.runs:
        assert info["precisions"]["bf16"]["backends"]["torch"]["why"] == bf16.why
    assert isinstance(info["auto"], str) and "/" in info["auto"]


def test_an_explicit_bf16_that_does_not_run_is_one_line_and_no_files(tiny_pspnet, tmp_path, capsys):
    if capability.check("bf16").runs:
        pytest.skip("bf16 runs on this CPU (the refusal is checked where it does not: the AVX2-only run)")
    weights = tmp_path / "tiny.safetensors"
    save_weights(tiny_pspnet(3).eval(), weights, ["a", "b", "c"], [[0, 0, 0], [1, 1, 1], [2, 2, 2]])
    image = tmp_path / "frame.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    out = tmp_path / "out"
    code = main(["predict", str(image), "--weights", str(weights), "--precision", "bf16", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "precision bf16" in err[0] and "use precision auto" in err[0]
    assert "Traceback" not in err[0] and not out.exists()


def test_auto_chooses_and_runs_something_that_runs_here(tiny_pspnet):
    model = tiny_pspnet(3).eval()
    runner = prepare_for_inference(model, "auto", expected_calls=1)  # decided at once (no probe under emulation)
    assert capability.check(runner.precision, runner.backend).runs
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = runner(x)
        ref = model(x)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    if runner.precision == "fp32":
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
