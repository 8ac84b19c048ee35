"""``precision="auto"``: features decide where they can, a cached probe where they cannot, and int8 only
for weights known to keep their labels in int8 (pspnet/inference/auto.py)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from pspnet.inference import auto
from pspnet.inference.prepare import AutoPSPNet, prepare_for_inference
from pspnet.models.weights import read_state_dict, save_weights, update_metadata

CLOCK = [0.0]  # the probe's clock in these tests: the fake runners advance it, nothing sleeps


@pytest.fixture(autouse=True)
def fake_clock(monkeypatch):
    """``auto``'s ``time.perf_counter`` reads :data:`CLOCK`, which only the fake runners move: every timing
    in these tests is exact, whatever else the machine is doing."""
    CLOCK[0] = 0.0
    monkeypatch.setattr(auto.time, "perf_counter", lambda: CLOCK[0])


class Sleeper:
    """A runner that takes ``seconds`` per call on the fake clock (what the probe times) and counts its calls."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.calls = seconds, 0

    def __call__(self, x):
        self.calls += 1
        CLOCK[0] += self.seconds
        return x


def fake_build(speeds: dict[str, float], built: list[str], setup: dict[str, float] | None = None):
    def build(precision, backend, calibration):
        built.append(f"{precision}/{backend}")
        CLOCK[0] += (setup or {}).get(f"{precision}/{backend}", 0.0)  # e.g. int8 quantisation
        return Sleeper(speeds[f"{precision}/{backend}"])
    return build


def never_build(*args):
    raise AssertionError("the probe ran although its result was cached or not needed")


@pytest.fixture
def net(tiny_pspnet):
    return tiny_pspnet(3).eval()


@pytest.mark.parametrize(("cpu_kind", "expected"), [("zen4", "bf16"), ("avx2", "fp32")])
def test_without_an_int8_record_features_decide(net, simulate_cpu, tmp_path, cpu_kind, expected):
    simulate_cpu(cpu_kind, onnxruntime=None, openvino=None)  # no other fp32 engine either
    choice = auto.choose_auto(net, (1, 3, 64, 64), never_build, int8_agreement=None, cache_path=tmp_path / "c.json")
    assert (choice.precision, choice.backend) == (expected, "torch")
    assert "int8 not considered" in choice.reason
    assert not (tmp_path / "c.json").exists()


@pytest.mark.parametrize(("cpu_kind", "agreement", "why"), [
    ("zen4", 0.99, "keep only 99.00%"),             # below the bound: never chosen, however fast
    ("avx2", None, "no 7-bit (this CPU has no VNNI) int8 agreement"),  # no VNNI: the 7-bit graph needs its own
])
def test_int8_is_not_a_candidate(net, simulate_cpu, tmp_path, cpu_kind, agreement, why):
    simulate_cpu(cpu_kind, openvino=None, onnxruntime="1.0")
    backends, why_not = auto.int8_candidates(torch.device("cpu"), agreement)
    assert backends == [] and why in why_not["onnxruntime"]
    if cpu_kind == "zen4":  # bf16 native: no other fp32 engine either, so no probe at all
        choice = auto.choose_auto(net, (1, 3, 64, 64), never_build, int8_agreement=agreement,
                                  cache_path=tmp_path / "c.json")
        assert choice.backend == "torch" and why in choice.reason


@pytest.mark.parametrize(("int8_s", "expected"), [(0.001, "int8/onnxruntime"), (0.05, "bf16/torch")])
def test_probe_picks_the_faster_and_caches_it(net, simulate_cpu, monkeypatch, tmp_path, int8_s, expected):
    pytest.importorskip("onnxruntime")
    simulate_cpu("zen4")
    cache = tmp_path / "auto.json"
    built: list[str] = []
    speeds = {"bf16/torch": 0.02, "int8/onnxruntime": int8_s}
    choice = auto.choose_auto(net, (1, 3, 64, 64), fake_build(speeds, built), int8_agreement=0.997, cache_path=cache)
    assert choice.mode == expected and not choice.cached
    assert sorted(built) == ["bf16/torch", "int8/onnxruntime"]
    assert set(choice.times_ms) == set(speeds) and "99.70%" in choice.reason
    # second time: from the cache, no runner built
    again = auto.choose_auto(net, (1, 3, 64, 64), never_build, int8_agreement=0.997, cache_path=cache)
    assert again.mode == expected and again.cached and "cached probe" in again.describe()
    # another input shape, or another CPU, is another key: probed again
    built.clear()
    auto.choose_auto(net, (1, 3, 96, 64), fake_build(speeds, built), int8_agreement=0.997, cache_path=cache)
    assert built
    simulate_cpu("xeon-amx")
    built.clear()
    auto.choose_auto(net, (1, 3, 64, 64), fake_build(speeds, built), int8_agreement=0.997, cache_path=cache)
    assert built
    assert len(json.loads(cache.read_text())) == 3
    # another pspnet release (its fast paths may have changed): probed again
    monkeypatch.setattr(auto, "__version__", "0.0.0-test")
    built.clear()
    auto.choose_auto(net, (1, 3, 64, 64), fake_build(speeds, built), int8_agreement=0.997, cache_path=cache)
    assert built
    # oneDNN capped below this CPU's best (torch and OpenVINO run other kernels): probed again
    capped = "AVX2" if os.environ.get("ONEDNN_MAX_CPU_ISA") != "AVX2" else "AVX512_CORE"  # not the one in force
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", capped)
    built.clear()
    auto.choose_auto(net, (1, 3, 64, 64), fake_build(speeds, built), int8_agreement=0.997, cache_path=cache)
    assert built


def test_damaged_cache_is_probed_again(net, simulate_cpu, monkeypatch, tmp_path):
    pytest.importorskip("onnxruntime")
    simulate_cpu("zen4")
    cache = tmp_path / "auto.json"
    cache.write_text("{not json")
    built: list[str] = []
    choice = auto.choose_auto(net, (1, 3, 64, 64), fake_build({"bf16/torch": 0.0, "int8/onnxruntime": 0.01}, built),
                              int8_agreement=0.999, cache_path=cache)
    assert built and choice.mode == "bf16/torch"
    assert json.loads(cache.read_text())  # rewritten, valid


def test_auto_runner_built_at_once_where_the_features_decide(net, simulate_cpu, monkeypatch, tmp_path):
    """No int8 record and no other engine: the mode is known before any input, so it is built in the
    constructor, once, and runs without a probe or a cache file."""
    simulate_cpu("avx2", onnxruntime=None, openvino=None)
    monkeypatch.setenv("PSPNET_HOME", str(tmp_path))
    built: list[str] = []
    runner = AutoPSPNet(net, fake_build({"fp32/torch": 0.0}, built), int8_agreement=None)
    assert (runner.precision, runner.backend) == ("fp32", "torch") and built == ["fp32/torch"]
    assert "int8 not considered" in runner.choice.reason
    runner(torch.randn(1, 3, 32, 32))
    runner(torch.randn(1, 3, 48, 48))  # another shape: still no probe and no rebuild
    assert built == ["fp32/torch"] and runner.runner.calls == 2
    assert not (tmp_path / "auto_mode.json").exists()


@pytest.mark.parametrize("fastest", ["int8", "torch"])
def test_auto_runner_runs_what_it_chose(net, simulate_cpu, monkeypatch, tmp_path, fastest):
    """End to end, on what this machine runs: a cached probe says which candidate is fastest, and the runner
    then gives exactly that mode's output (int8 differs from fp32, so running the other one would show)."""
    pytest.importorskip("onnxruntime")
    simulate_cpu("zen4", within_real=True)
    monkeypatch.setenv("PSPNET_HOME", str(tmp_path))
    agreement = {"onnxruntime": 0.999}
    x = torch.randn(1, 3, 64, 64)
    torch_mode = auto.torch_candidate(torch.device("cpu"))
    assert auto.int8_candidates(torch.device("cpu"), agreement)[0] == ["onnxruntime"]
    candidates = auto.candidates(torch.device("cpu"), agreement)[0]  # fp32 on other engines too, where no bf16
    target = ("int8", "onnxruntime") if fastest == "int8" else torch_mode
    times = {"/".join(m): 1.0 if m == target else 10.0 for m in candidates}
    key = auto._cache_key(net, tuple(x.shape), candidates)
    entry = {"times_ms": times, "setup_ms": dict.fromkeys(times, 0)}
    (tmp_path / "auto_mode.json").write_text(json.dumps({key: entry}))
    runner = prepare_for_inference(net, "auto", int8_agreement=agreement)
    assert isinstance(runner, AutoPSPNet) and runner.precision == "auto"
    out = runner(x)
    expected = ("int8", "onnxruntime") if fastest == "int8" else torch_mode
    assert (runner.precision, runner.backend) == expected and runner.choice.cached
    reference = prepare_for_inference(net, *expected, calibration=[x])(x)
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-5)
    other = prepare_for_inference(net, *(torch_mode if fastest == "int8" else ("int8", "onnxruntime")),
                                  calibration=[x])(x)
    assert not torch.allclose(out, other, atol=1e-5)  # the two modes differ: the comparison above can fail


def test_a_candidate_that_fails_is_dropped_and_the_run_goes_on(net, simulate_cpu, tmp_path):
    """One candidate raising in the probe (a kernel this CPU refuses) is dropped with its reason; auto never
    ends the run, and a failed probe is not cached."""
    simulate_cpu("zen4", onnxruntime="1.0")
    built: list[str] = []
    ok = fake_build({"bf16/torch": 0.02}, built)

    def build(precision, backend, calibration):
        if backend == "onnxruntime":
            raise RuntimeError("mkldnn_reorder_conv2d_weight: int8 path needs the cpu support vnni\nmore")
        return ok(precision, backend, calibration)
    choice = auto.choose_auto(net, (1, 3, 64, 64), build, int8_agreement=0.999, cache_path=tmp_path / "c.json")
    assert choice.mode == "bf16/torch" and "int8/onnxruntime dropped (RuntimeError: mkldnn_reorder" in choice.reason
    assert "more" not in choice.reason and not (tmp_path / "c.json").exists()


def test_the_auto_runner_falls_back_to_fp32_where_its_mode_fails(net, simulate_cpu, tmp_path, caplog):
    simulate_cpu("zen4")
    built: list[str] = []

    def build(precision, backend, calibration):
        built.append(f"{precision}/{backend}")
        if precision == "bf16":
            raise RuntimeError("bf16 path needs the cpu support avx_ne_convert")
        return Sleeper(0.0)
    with caplog.at_level("WARNING", logger="pspnet.fast"):
        runner = AutoPSPNet(net, build, int8_agreement=None)
    assert built == ["bf16/torch", "fp32/torch"] and runner.choice.mode == "fp32/torch"
    assert "bf16/torch failed here (RuntimeError: bf16 path needs" in caplog.text
    x = torch.randn(1, 3, 32, 32)
    assert runner(x) is x


def test_recorded_agreement_roundtrip_keeps_int8_storage(net, tmp_path):
    path = tmp_path / "w.safetensors"
    save_weights(net, path, ["a", "b", "c"], [[0, 0, 0], [1, 1, 1], [2, 2, 2]], storage="int8")
    state_before, _ = read_state_dict(path)
    assert auto.recorded_int8_agreement(read_state_dict(path)[1]) is None
    update_metadata(path, {"int8_agreement": {"agreement": 0.9968, "data": "camvid val"}})
    state_after, meta = read_state_dict(path)
    assert auto.recorded_int8_agreement(meta) == pytest.approx(0.9968)
    assert meta["class_names"] == ["a", "b", "c"]
    assert all(torch.equal(state_before[k], state_after[k]) for k in state_before)
    assert auto.recorded_int8_agreement({"int8_agreement": "high"}) is None
    assert auto.recorded_int8_agreement({"int8_agreement": 1.5}) is None


def test_int8_is_not_considered_where_calibration_would_not_fit_in_memory(net, simulate_cpu, monkeypatch, tmp_path):
    pytest.importorskip("onnxruntime")
    simulate_cpu("zen4")
    small, large = (1, 3, 64, 64), (1, 3, 1024, 2048)
    weights = 4 * sum(p.numel() * 4 for p in net.parameters())  # the estimate's fixed part; the rest scales
    assert auto.calibration_bytes(net, large) - weights == pytest.approx(
        (auto.calibration_bytes(net, small) - weights) * 512, rel=1e-5)
    # half the budget lies between the two needs: room for the small input, not the large one
    budget = auto.calibration_bytes(net, small) + auto.calibration_bytes(net, large)
    monkeypatch.setattr(auto, "available_memory", lambda: budget)
    speeds = {"bf16/torch": 0.01, "int8/onnxruntime": 0.0}
    choice = auto.choose_auto(net, large, never_build, int8_agreement=0.999, cache_path=tmp_path / "c.json")
    assert choice.mode == "bf16/torch" and "free memory" in choice.reason
    built: list[str] = []
    choice = auto.choose_auto(net, small, fake_build(speeds, built), int8_agreement=0.999,
                              cache_path=tmp_path / "c.json")
    assert built and choice.mode == "int8/onnxruntime"


def test_a_known_number_of_calls_weighs_setup(net, simulate_cpu, monkeypatch, tmp_path):
    """int8 is faster per call but costs a quantisation first: not worth it for a few images, worth it for many."""
    pytest.importorskip("onnxruntime")
    simulate_cpu("zen4")
    cache = tmp_path / "c.json"
    speeds = {"bf16/torch": 0.02, "int8/onnxruntime": 0.005}
    built: list[str] = []
    calls = auto.FEW_CALLS + 2  # enough to probe; too few for int8's 0.3 s setup to pay (0.24 s of bf16 calls)
    one = auto.choose_auto(net, (1, 3, 64, 64), fake_build(speeds, built, {"int8/onnxruntime": 0.3}),
                           int8_agreement=0.999, cache_path=cache, calls=calls)
    assert one.mode == "bf16/torch" and one.setup_ms["int8/onnxruntime"] > one.setup_ms["bf16/torch"]
    assert f"{calls} call(s)" in one.reason and "s setup" in one.describe()
    many = auto.choose_auto(net, (1, 3, 64, 64), never_build, int8_agreement=0.999, cache_path=cache, calls=1000)
    assert many.mode == "int8/onnxruntime" and many.cached
    per_call = auto.choose_auto(net, (1, 3, 64, 64), never_build, int8_agreement=0.999, cache_path=cache)
    assert per_call.mode == "int8/onnxruntime"


@pytest.mark.parametrize("calls", [1, auto.FEW_CALLS])
def test_a_few_images_skip_the_probe(net, simulate_cpu, monkeypatch, tmp_path, calls):
    """A job of a few calls cannot win back int8's setup: the torch mode, without probing."""
    pytest.importorskip("onnxruntime")
    simulate_cpu("zen4")
    choice = auto.choose_auto(net, (1, 3, 64, 64), never_build, int8_agreement=0.999, cache_path=tmp_path / "c.json",
                              calls=calls)
    assert choice.mode == "bf16/torch" and f"{calls} call(s)" in choice.reason
    assert not (tmp_path / "c.json").exists()


BOTH = {"onnxruntime": 0.998, "torch": 0.997}


@pytest.mark.parametrize(("torch_s", "expected"), [(0.001, "int8/torch"), (0.05, "int8/onnxruntime")])
def test_torch_int8_is_a_third_candidate_where_its_agreement_is_recorded(net, simulate_cpu, monkeypatch, tmp_path,
                                                                          torch_s, expected):
    """With a torch int8 record and torchao installed, the probe times all three and the fastest wins."""
    pytest.importorskip("onnxruntime")
    simulate_cpu("zen4", torchao="0.18")
    built: list[str] = []
    speeds = {"bf16/torch": 0.03, "int8/onnxruntime": 0.01, "int8/torch": torch_s}
    choice = auto.choose_auto(net, (1, 3, 64, 64), fake_build(speeds, built), int8_agreement=BOTH,
                              cache_path=tmp_path / "c.json")
    assert choice.mode == expected
    assert sorted(built) == sorted(speeds) and set(choice.times_ms) == set(speeds)
    assert "int8 on onnxruntime keeps 99.80%" in choice.reason and "int8 on torch keeps 99.70%" in choice.reason


@pytest.mark.parametrize(("agreement", "torchao", "why"), [
    (0.998, True, "torch: the weights record no int8 agreement measurement on torch"),  # one number: onnxruntime's
    ({"onnxruntime": 0.998, "torch": 0.99}, True, "keep only 99.00% of the fp32 labels in int8 on torch"),
    (BOTH, False, "torchao is not installed"),
])
def test_torch_int8_needs_its_own_record_and_torchao(net, simulate_cpu, monkeypatch, tmp_path, agreement, torchao,
                                                     why):
    simulate_cpu("zen4", torchao="0.18" if torchao else None, onnxruntime="1.0")
    backends, why_not = auto.int8_candidates(torch.device("cpu"), agreement)
    assert backends == ["onnxruntime"] and why in f"torch: {why_not['torch']}"
    # onnxruntime's record below the bound too: no int8 candidate at all, and the reason names both backends
    low = {"onnxruntime": 0.9, **({} if isinstance(agreement, float) else {"torch": agreement["torch"]})}
    choice = auto.choose_from_features(torch.device("cpu"), low)
    assert choice is not None and choice.backend == "torch"
    assert "onnxruntime: the weights keep only 90.00%" in choice.reason and why in choice.reason


@pytest.mark.parametrize(("openvino", "agreement", "left_out"), [
    (None, BOTH, "int8 on onnxruntime not considered"),
    ("2026.0", {**BOTH, "openvino": 0.996}, "int8 on onnxruntime and openvino not considered"),
])
def test_memory_guard_leaves_out_the_onnxruntime_quantiser_only(net, simulate_cpu, monkeypatch, tmp_path, openvino,
                                                                 agreement, left_out):
    """ONNX Runtime's calibration holds every activation, and OpenVINO's int8 is calibrated by the same
    quantiser; torch's observers do not, so torch int8 stays."""
    simulate_cpu("zen4", torchao="0.18", onnxruntime="1.0", openvino=openvino)
    monkeypatch.setattr(auto, "available_memory", lambda: 1)
    built: list[str] = []
    choice = auto.choose_auto(net, (1, 3, 64, 64), fake_build({"bf16/torch": 0.02, "int8/torch": 0.001}, built),
                              int8_agreement=agreement, cache_path=tmp_path / "c.json")
    assert sorted(built) == ["bf16/torch", "int8/torch"] and choice.mode == "int8/torch"
    assert left_out in choice.reason


def test_recorded_agreements_per_backend(net, tmp_path):
    path = tmp_path / "w.safetensors"
    save_weights(net, path, ["a", "b", "c"], [[0, 0, 0], [1, 1, 1], [2, 2, 2]])
    assert auto.recorded_int8_agreements(read_state_dict(path)[1]) == {}
    update_metadata(path, {"int8_agreement_torch": {"agreement": 0.9971}})
    assert auto.recorded_int8_agreements(read_state_dict(path)[1]) == {"torch": pytest.approx(0.9971)}
    update_metadata(path, {"int8_agreement": {"agreement": 0.9982}})
    assert auto.recorded_int8_agreements(read_state_dict(path)[1]) == {"onnxruntime": pytest.approx(0.9982),
                                                                       "torch": pytest.approx(0.9971)}


THREE = {**BOTH, "openvino": 0.996}


@pytest.mark.parametrize(("openvino_s", "installed", "expected"), [
    (0.001, True, "int8/openvino"), (0.05, True, "int8/onnxruntime"), (0.001, False, "int8/onnxruntime")])
def test_openvino_int8_is_a_candidate_where_installed_and_recorded(net, simulate_cpu, monkeypatch, tmp_path,
                                                                    openvino_s, installed, expected):
    """With its own record and OpenVINO installed, OpenVINO's int8 joins the probe; the fastest wins."""
    simulate_cpu("zen4", torchao=None, onnxruntime="1.0", openvino="2026.0" if installed else None)
    built: list[str] = []
    speeds = {"bf16/torch": 0.03, "int8/onnxruntime": 0.01, "int8/openvino": openvino_s}
    choice = auto.choose_auto(net, (1, 3, 64, 64), fake_build(speeds, built), int8_agreement=THREE,
                              cache_path=tmp_path / "c.json")
    assert choice.mode == expected
    assert ("int8/openvino" in built) == installed
    assert ("int8 on openvino keeps 99.60%" in choice.reason) == installed
    if not installed:
        _, why_not = auto.int8_candidates(torch.device("cpu"), THREE)
        assert "OpenVINO is not installed" in why_not["openvino"]
        assert 'pip install "pspnet[openvino]"' in why_not["openvino"]


def test_openvino_int8_needs_its_own_record(net, simulate_cpu, monkeypatch):
    simulate_cpu("zen4", openvino="2026.0")
    _, why_not = auto.int8_candidates(torch.device("cpu"), BOTH)
    assert "no int8 agreement measurement on openvino" in why_not["openvino"]
    assert "--backend openvino --record" in why_not["openvino"]


@pytest.mark.parametrize(("cpu_kind", "seven_bit"), [("avx2", True), ("zen4", False)])
def test_int8_is_quantised_to_7_bits_where_the_cpu_has_no_vnni(net, simulate_cpu, cpu_kind, seven_bit, tmp_path):
    """Without VNNI, int8 products are summed in pairs into 16 bits (AVX2's vpmaddubsw) and can saturate: the
    weights are quantised to 7 bits there, and the agreement record read is the 7-bit one."""
    pytest.importorskip("onnxruntime")
    import onnx
    from onnx import numpy_helper
    simulate_cpu(cpu_kind)
    runner = prepare_for_inference(net, "int8", "onnxruntime")
    assert runner.reduce_range is seven_bit
    x = torch.randn(1, 3, 64, 64)
    runner(x)
    graph = onnx.load(str(runner.cache_dir / "pspnet_1x3x64x64_int8.onnx"))
    weights = [numpy_helper.to_array(i) for i in graph.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    largest = max(int(abs(w.astype(int)).max()) for w in weights if w.ndim == 4)
    assert (largest <= 64) is seven_bit
    meta = {"int8_agreement": {"agreement": 0.998}, "int8_agreement_7bit": {"agreement": 0.997}}
    assert auto.recorded_int8_agreements(meta)["onnxruntime"] == (0.997 if seven_bit else 0.998)


@pytest.mark.parametrize(("ort_s", "expected"), [(0.01, "fp32/onnxruntime"), (0.05, "fp32/torch")])
def test_without_native_bf16_the_other_fp32_engines_join_the_probe(net, simulate_cpu, tmp_path, ort_s, expected):
    """An AVX2-only CPU: no bf16, and no int8 without a 7-bit record; ONNX Runtime's and OpenVINO's fp32 (the same
    function) are timed against torch's, and the fastest runs. Where bf16 is native they are not candidates."""
    simulate_cpu("avx2", onnxruntime="1.0", openvino="2026.0")
    built: list[str] = []
    speeds = {"fp32/torch": 0.03, "fp32/onnxruntime": ort_s, "fp32/openvino": 0.04}
    choice = auto.choose_auto(net, (1, 3, 64, 64), fake_build(speeds, built), cache_path=tmp_path / "c.json")
    assert choice.mode == expected and sorted(built) == sorted(speeds)
    assert "the same function on another engine" in choice.reason and "int8 not considered" in choice.reason
    assert auto.choose_from_features(torch.device("cpu"), None, calls=3).mode == "fp32/torch"  # a short job
    simulate_cpu("zen4", onnxruntime="1.0", openvino="2026.0")
    assert auto.fp32_engines(torch.device("cpu")) == []
