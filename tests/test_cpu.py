"""What this CPU runs (pspnet.capability) and every decision that depends on it (pspnet.cpu), each taken on
every simulated CPU kind (the ``simulate_cpu`` fixture), so one CI machine runs the decisions of them all."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from pspnet import bench, capability, cpu
from pspnet.cpu import resolve_inference_precision, resolve_precision
from pspnet.errors import ConfigError
from pspnet.inference import onednn
from pspnet.inference.auto import choose_from_features
from pspnet.inference.prepare import prepare_for_inference
from pspnet.training.trainer import Trainer

# what each simulated CPU (pspnet.capability.PROFILES) must decide: (bf16 runs, bf16 native, auto's precision
# for inference and training). A Zen 4 decides bf16 by the measured probe (pinned at 2.9x in conftest).
CPUS = {"avx2": (False, False, "fp32"), "avx512": (True, False, "fp32"), "zen4": (True, True, "bf16"),
        "xeon-amx": (True, True, "bf16"), "arm64": (False, False, "fp32")}


@pytest.mark.parametrize("name", list(CPUS))
def test_simulated_cpus_decide_bf16_from_what_runs(simulate_cpu, name, caplog):
    runs, native, auto = CPUS[name]
    caps = simulate_cpu(name)
    bf16 = caps.check("bf16")
    assert (bf16.runs, bf16.native) == (runs, native) and (bf16.why is None) == native
    assert caps.check("fp32").runs and caps.check("fp32").native  # fp32 runs everywhere
    # every place that branches on it follows: inference "auto", training autocast "auto"
    assert resolve_inference_precision("auto") == auto
    assert resolve_precision("auto", torch.device("cpu")) == (torch.bfloat16 if auto == "bf16" else None)
    # an explicit bf16 trains in bf16 only where it is native, else fp32 with a warning that says why
    with caplog.at_level("WARNING", logger="pspnet.cpu"):
        assert resolve_precision("bf16", torch.device("cpu")) == (torch.bfloat16 if native else None)
    assert ("training in fp32 instead" in caplog.text) is not native
    assert resolve_precision("fp32", torch.device("cpu")) is None
    info = bench.machine_info()
    assert info["simulated"] == name and ("bf16/torch" in info["native"]) is native
    assert f"PSPNET_SIMULATE_CPU={name}" in bench.format_machine(info)
    assert info["auto_precision"] == auto  # benchmarks say what auto runs, and why
    assert f"auto precision {auto} ({info['auto_precision_why']})" in bench.format_machine(info)


@pytest.mark.parametrize("name", ["avx2", "arm64"])
def test_an_explicit_precision_that_does_not_run_is_a_named_error(simulate_cpu, name, tiny_pspnet):
    simulate_cpu(name)
    model = tiny_pspnet().eval()
    with pytest.raises(ConfigError, match=r"precision bf16 on backend torch does not run .*use precision auto"):
        prepare_for_inference(model, "bf16")
    assert prepare_for_inference(model, "fp32").precision == "fp32"


def test_a_simulation_never_adds_what_the_runtime_lacks(monkeypatch):
    """PSPNET_SIMULATE_CPU as users set it: a Xeon's answers within this machine's runtime, so a CPU that
    cannot run bf16 is not told it can (what broke main on the AVX2-only EPYC)."""
    real = capability.real_capabilities().check("bf16")
    monkeypatch.setenv(capability.SIMULATE_ENV, "xeon-amx")
    assert capability.check("bf16").runs == real.runs
    avx2_like = dataclasses.replace(capability.real_facts(), mkldnn_bf16=False, isa="AVX2")
    monkeypatch.setattr(capability, "real_facts", lambda: avx2_like)
    assert not capability.check("bf16").runs and "no bf16 convolution" in capability.check("bf16").why
    monkeypatch.setenv(capability.SIMULATE_ENV, "pentium")
    with pytest.raises(ConfigError, match="choose from avx2"):
        capability.check("fp32")


# ------------------------------------------------------------------ bf16 where the runtime leaves it open
@pytest.mark.parametrize("speedup, bf16", [(2.9, True), (0.61, False)], ids=["zen4-like", "xeon-without-amx"])
def test_avx512_bf16_without_amx_follows_the_measured_probe(simulate_cpu, monkeypatch, speedup, bf16):
    """avx512_bf16 alone: a Zen 4 (bf16 matrix products 2.9x fp32's) trains and predicts in bf16; a Xeon
    whose AMX is hidden (0.61x, bench/emulate_zen4.sh) in fp32, where bf16 ran 1.4x slower."""
    simulate_cpu("zen4", onnxruntime=None, openvino=None)  # no other fp32 engine: the torch mode decides alone
    monkeypatch.setattr(cpu, "bf16_speedup", lambda: speedup)
    assert resolve_inference_precision("auto") == ("bf16" if bf16 else "fp32")
    assert resolve_precision("auto", torch.device("cpu")) == (torch.bfloat16 if bf16 else None)
    choice = choose_from_features(torch.device("cpu"), None)  # no int8 record: the torch mode, and why
    assert choice.precision == ("bf16" if bf16 else "fp32") and f"measured {speedup:.2f}x" in choice.reason


@pytest.mark.parametrize("name", ["xeon-amx", "avx512", "avx2", "arm64"])
def test_the_runtime_decides_without_a_probe_elsewhere(simulate_cpu, monkeypatch, name):
    """The pinned 2.9x probe answer cannot make bf16 chosen where bf16 does not run natively."""
    simulate_cpu(name)

    def no_probe():
        raise AssertionError("probed although the runtime decides")
    monkeypatch.setattr(cpu, "bf16_speedup", no_probe)
    assert resolve_inference_precision("auto") == CPUS[name][2]


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


def test_the_probe_divides_fp32_time_by_bf16_time(monkeypatch):
    """The probe's ratio, on a clock the fake matrix product advances (fp32 3 units, bf16 1): exactly 3.0,
    so a probe that inverted the ratio, timed one precision twice or mixed them up fails."""
    clock = [0.0]

    def matmul(x, y):
        clock[0] += 3.0 if x.dtype == torch.float32 else 1.0
        return x
    monkeypatch.setattr(cpu.torch, "matmul", matmul)
    monkeypatch.setattr(cpu.time, "perf_counter", lambda: clock[0])
    assert cpu._measure_bf16_speedup() == 3.0


def test_the_runtime_answers_match_what_runs_here(tiny_pspnet):
    """On this machine, whatever it is: bf16 'runs' exactly where PyTorch says oneDNN has bf16 and a bf16
    network then builds and runs; where it does not, asking for it is the named error, not a traceback."""
    caps = capability.real_capabilities()
    assert caps.facts.mkldnn_bf16 == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert caps.facts.isa == torch.backends.cpu.get_cpu_capability()
    model = tiny_pspnet().eval()
    x = torch.randn(1, 3, 40, 48)
    if caps.check("bf16").runs:
        with torch.no_grad():
            assert torch.isfinite(prepare_for_inference(model, "bf16")(x)).all()
    else:
        with pytest.raises(ConfigError, match="does not run"):
            prepare_for_inference(model, "bf16")


def test_no_proc_cpuinfo_changes_no_answer(monkeypatch):
    """ARM64 Linux, macOS and some containers have no /proc/cpuinfo: the answers come from the runtime."""
    before = capability.real_capabilities().table()
    monkeypatch.setattr(capability, "_cpuinfo", lambda: ("", frozenset()))
    capability._measured.cache_clear()
    try:
        assert capability.real_capabilities().table() == before
        assert cpu.cpu_model() and bench.machine_info()["flags"] == []
    finally:
        capability._measured.cache_clear()


@pytest.mark.parametrize("name", ["xeon-amx", "avx512"])
def test_auto_inference_runs_the_chosen_precision(simulate_cpu, name, tiny_pspnet):
    """``prepare_for_inference(model, "auto")`` really builds a bf16 / fp32 network per the CPU, simulated
    within what this machine runs: a Xeon's bf16 here only where bf16 runs natively here too."""
    bf16 = name == "xeon-amx" and capability.real_capabilities().check("bf16").runs
    simulate_cpu(name, within_real=True)
    model = tiny_pspnet().eval()
    prepared = prepare_for_inference(model, "auto", expected_calls=1)  # one call: torch's mode, decided at once
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
def test_trainer_auto_precision_follows_the_cpu(simulate_cpu, tmp_path, name, folder_dataset, tiny_run_config):
    """``train.precision=auto`` trains under bf16 autocast on a bf16 CPU, in fp32 elsewhere (one real
    iteration each, so both paths run here where bf16 runs)."""
    bf16 = name == "zen4" and capability.real_capabilities().check("bf16").runs
    simulate_cpu(name, within_real=True)
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
import pspnet.capability as cap
print(json.dumps({"same": before == after, "cached": cap._cpuinfo.cache_info().currsize}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == {"same": True, "cached": 0}


@pytest.mark.parametrize(("cap", "vnni", "bf16"), [("AVX2", False, False), ("AVX512_CORE_VNNI", True, False),
                                                   ("AVX512_CORE_BF16", True, True)])
def test_a_onednn_cap_takes_away_what_it_keeps_onednn_from(monkeypatch, cap, vnni, bf16):
    """Under ONEDNN_MAX_CPU_ISA oneDNN (torch's and OpenVINO's) leaves out the units above the cap: int8 there is
    7-bit (OpenVINO's int8 under an AVX2 cap kept 99.29% of the labels in 8 bits, below the 99.5% bound)."""
    quick = capability._quick_facts()
    monkeypatch.setattr(capability, "_quick_facts", lambda: {**quick, "avx512": True, "vnni": True,
                                                             "avx512_bf16": True, "amx": False})
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    facts = capability.real_facts()
    assert (facts.vnni, facts.avx512_bf16) == (vnni, bf16)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert capability.real_facts().vnni and capability.real_facts().avx512_bf16
