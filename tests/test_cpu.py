"""CPU feature detection (pspnet.cpu) and every branch that depends on it, each forced both ways
through ``PSPNET_CPU_FLAGS``, so one CI machine runs the paths of a CPU with and without bf16/AMX."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pspnet import bench, cpu
from pspnet.cpu import resolve_inference_precision, resolve_precision
from pspnet.errors import ConfigError
from pspnet.inference import onednn
from pspnet.inference.auto import choose_from_features
from pspnet.inference.prepare import prepare_for_inference
from pspnet.training.trainer import Trainer

# flags as /proc/cpuinfo spells them, for the CPUs this project's machines have: a Zen 4 (avx512_bf16,
# no AMX), a Sapphire Rapids Xeon (AMX and avx512_bf16), an AMX-only set (amx_bf16 alone must be
# enough), an AVX-512 CPU without bf16 and an AVX2-only one.
ZEN4 = "avx2 fma avx512f avx512bw avx512vl avx512_vnni avx512_bf16"
XEON_AMX = ZEN4 + " amx_tile amx_bf16 amx_int8"
AMX_ONLY = "avx2 amx_tile amx_bf16"
AVX512_NO_BF16 = "avx2 fma avx512f avx512bw avx512vl avx512_vnni"
AVX2 = "avx2 fma"
CPUS = {"zen4": (ZEN4, True, False), "xeon-amx": (XEON_AMX, True, True), "amx-only": (AMX_ONLY, True, True),
        "avx512-no-bf16": (AVX512_NO_BF16, False, False), "avx2": (AVX2, False, False),
        "int8-amx-only": ("avx2 amx_tile amx_int8", False, True), "none": ("", False, False)}


@pytest.mark.parametrize("name", list(CPUS))
def test_forced_flags_decide_bf16_and_amx(monkeypatch, name):
    flags, bf16, amx = CPUS[name]
    monkeypatch.setenv(cpu.FLAGS_ENV, flags)
    assert cpu.flags_forced() and cpu.cpu_flags() == frozenset(flags.split())
    assert cpu.has_bf16() is bf16 and cpu.has_amx() is amx
    # every place that branches on it follows: inference "auto", training autocast "auto"
    assert resolve_inference_precision("auto") == ("bf16" if bf16 else "fp32")
    assert resolve_precision("auto", torch.device("cpu")) == (torch.bfloat16 if bf16 else None)
    # explicit choices do not depend on the CPU
    assert resolve_inference_precision("fp32") == "fp32" and resolve_inference_precision("bf16") == "bf16"
    assert resolve_precision("fp32", torch.device("cpu")) is None
    assert resolve_precision("bf16", torch.device("cpu")) == torch.bfloat16
    info = bench.machine_info()
    assert info["flags_forced"] and set(info["flags"]) == set(flags.split()) & set(cpu.REPORTED_FLAGS)
    assert f"forced by {cpu.FLAGS_ENV}" in bench.format_machine(info)
    assert info["auto_precision"] == ("bf16" if bf16 else "fp32")  # benchmarks say what auto runs, and why
    assert f"auto precision {info['auto_precision']} ({info['auto_precision_why']})" in bench.format_machine(info)


# ------------------------------------------------------------------ bf16 where the flags leave it open
@pytest.mark.parametrize("speedup, bf16", [(2.9, True), (0.61, False)], ids=["zen4-like", "xeon-without-amx"])
def test_avx512_bf16_without_amx_follows_the_measured_probe(monkeypatch, speedup, bf16):
    """avx512_bf16 alone: a Zen 4 (bf16 matrix products 2.9x fp32's) trains and predicts in bf16; a Xeon
    whose AMX is hidden (0.61x, bench/emulate_zen4.sh) in fp32, where bf16 ran 1.4x slower."""
    monkeypatch.setenv(cpu.FLAGS_ENV, ZEN4)
    monkeypatch.setattr(cpu, "bf16_speedup", lambda: speedup)
    assert resolve_inference_precision("auto") == ("bf16" if bf16 else "fp32")
    assert resolve_precision("auto", torch.device("cpu")) == (torch.bfloat16 if bf16 else None)
    choice = choose_from_features(torch.device("cpu"), None)  # no int8 record: the torch mode, and why
    assert choice.precision == ("bf16" if bf16 else "fp32") and f"measured {speedup:.2f}x" in choice.reason


@pytest.mark.parametrize("flags", [XEON_AMX, AMX_ONLY, AVX512_NO_BF16, AVX2, ""])
def test_the_flags_decide_without_a_probe_elsewhere(monkeypatch, flags):
    monkeypatch.setenv(cpu.FLAGS_ENV, flags)

    def no_probe():
        raise AssertionError("probed although the flags decide")
    monkeypatch.setattr(cpu, "bf16_speedup", no_probe)
    assert resolve_inference_precision("auto") == ("bf16" if "amx_bf16" in flags else "fp32")


def test_the_probe_measures_once_per_machine_and_setting(monkeypatch, tmp_path):
    monkeypatch.undo()  # the suite's pinned answer: this test runs the real cache
    monkeypatch.setenv("PSPNET_HOME", str(tmp_path))
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    measured: list[float] = []

    def measure() -> float:
        measured.append(2.5)
        return 2.5
    monkeypatch.setattr(cpu, "_measure_bf16_speedup", measure)
    cpu._cached_bf16_speedup.cache_clear()
    try:
        assert cpu.bf16_speedup() == 2.5 and cpu.bf16_speedup() == 2.5 and len(measured) == 1
        cpu._cached_bf16_speedup.cache_clear()  # a new process reads the file
        assert cpu.bf16_speedup() == 2.5 and len(measured) == 1
        assert len(json.loads((tmp_path / "bf16_probe.json").read_text())) == 1
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")  # oneDNN capped: another measurement
        assert cpu.bf16_speedup() == 2.5 and len(measured) == 2
        (tmp_path / "bf16_probe.json").write_text("{not json")  # damaged: measured again and rewritten
        cpu._cached_bf16_speedup.cache_clear()
        assert cpu.bf16_speedup() == 2.5 and len(measured) == 3
        assert len(json.loads((tmp_path / "bf16_probe.json").read_text())) == 1
    finally:
        cpu._cached_bf16_speedup.cache_clear()


def test_the_real_probe_times_both_precisions():
    speedup = cpu._measure_bf16_speedup()
    assert 0 < speedup < 100


def test_override_syntax_and_detection(monkeypatch):
    monkeypatch.setenv(cpu.FLAGS_ENV, " avx2,amx_bf16  avx512f,")
    assert cpu.cpu_flags() == {"avx2", "amx_bf16", "avx512f"}
    monkeypatch.delenv(cpu.FLAGS_ENV)
    assert not cpu.flags_forced()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        pytest.skip("no /proc/cpuinfo on this system")
    first = next(line for line in text.splitlines() if line.startswith("flags"))
    assert cpu.cpu_flags() == frozenset(first.split(":", 1)[1].split())  # the real CPU's flags
    assert cpu.has_bf16() == ("avx512_bf16" in first.split() or "amx_bf16" in first.split())
    assert not bench.machine_info()["flags_forced"]


@pytest.mark.parametrize("name", ["xeon-amx", "avx512-no-bf16"])
def test_auto_inference_runs_the_chosen_precision(monkeypatch, name, tiny_pspnet):
    """``prepare_for_inference(model, "auto")`` really builds a bf16 / fp32 network per the CPU
    (bf16 runs in emulation where the CPU lacks it: slower, same code path)."""
    flags, bf16, _ = CPUS[name]
    monkeypatch.setenv(cpu.FLAGS_ENV, flags)
    model = tiny_pspnet().eval()
    prepared = prepare_for_inference(model, "auto")  # no int8 record: the features decide, at once
    assert prepared.precision == ("bf16" if bf16 else "fp32") and prepared.backend == "torch"
    body = {p.dtype for n, p in prepared.runner.named_parameters() if not n.startswith("classifier")}
    assert body == {torch.bfloat16 if bf16 else torch.float32}
    x = torch.randn(1, 3, 40, 48)
    with torch.no_grad():
        out, ref = prepared(x), model(x)
    assert out.shape == ref.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    if bf16:
        assert not torch.equal(out, ref)  # it really ran in bf16
    else:
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["zen4", "avx2"])
def test_trainer_auto_precision_follows_the_cpu(monkeypatch, tmp_path, name, folder_dataset, tiny_run_config):
    """``train.precision=auto`` trains under bf16 autocast on a bf16 CPU, in fp32 elsewhere (one real
    iteration each, so both paths run here)."""
    flags, bf16, _ = CPUS[name]
    monkeypatch.setenv(cpu.FLAGS_ENV, flags)
    data = folder_dataset(tmp_path / "data", n=4)
    cfg = tiny_run_config(data, tmp_path / "run", "train.iters=1", "train.precision=auto")
    trainer = Trainer(cfg, progress=False)
    assert trainer.amp_dtype == (torch.bfloat16 if bf16 else None)
    seen: list[torch.dtype] = []
    hook = trainer.model.cls[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    res = trainer.fit()
    hook.remove()
    assert res.iterations == 1 and seen and seen[0] == (torch.bfloat16 if bf16 else torch.float32)


def test_onednn_branch_can_be_switched_off(monkeypatch, tiny_pspnet):
    """``onednn=None`` picks oneDNN fused convolutions where PyTorch has them; forced absent, the
    same call builds the plain folded network with the same output."""
    model = tiny_pspnet().eval()
    x = torch.randn(1, 3, 40, 48)
    with torch.no_grad():
        ref = model(x)
    for available in ([True, False] if cpu.onednn_available() else [False]):
        monkeypatch.setattr(onednn, "onednn_available", lambda device="cpu", _a=available: _a)
        prepared = prepare_for_inference(model, "fp32")
        assert prepared.onednn is available
        assert any(isinstance(m, onednn.OneDNNConv) for m in prepared.modules()) is available
        with torch.no_grad():
            torch.testing.assert_close(prepared(x), ref, rtol=1e-4, atol=1e-4)
    # asking for oneDNN where it is absent is a clear error, not a silent fallback
    monkeypatch.setattr(onednn, "onednn_available", lambda device="cpu": False)
    with pytest.raises(ConfigError, match="onednn=True needs"):
        prepare_for_inference(model, "fp32", onednn=True)


def test_importing_changes_no_global_state():
    """Importing pspnet.cpu reads no file, sets no torch option and no environment variable."""
    code = """
import json, os, sys, torch
before = (dict(os.environ), torch.get_num_threads(), torch.get_default_dtype(), torch.backends.mkldnn.enabled,
          torch.get_float32_matmul_precision())
import pspnet.cpu as c
after = (dict(os.environ), torch.get_num_threads(), torch.get_default_dtype(), torch.backends.mkldnn.enabled,
         torch.get_float32_matmul_precision())
print(json.dumps({"same": before == after, "cached": c._cpuinfo.cache_info().currsize}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == {"same": True, "cached": 0}
