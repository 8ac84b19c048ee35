"""``pspnet bench``'s measurements on tiny sizes: the structure of what they return, never a speed."""

from __future__ import annotations

import math
import statistics
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from pspnet import bench, capability
from pspnet.cli import main
from pspnet.models import PSPNet, PSPNetConfig

QUIET = {"log": lambda s: None}
TINY_TRAIN = {"depth": 18, "crop": (64, 64), "num_classes": 5, "head_channels": 32, "aux_channels": 16}


def _train(batch: int, precisions=("fp32",)) -> dict:
    return bench.bench_training(**TINY_TRAIN, batch=batch, steps=1, warmup=0, precisions=precisions,
                                matmul_n=128, matmul_reps=2, **QUIET)


@pytest.mark.parametrize("cpu_kind", ["zen4", "avx2"])
def test_training_times_what_runs_natively_against_the_peak_of_the_precision_it_uses(simulate_cpu, cpu_kind):
    """bf16 is timed only where it runs natively (elsewhere listed with the reason, so the bench finishes in
    minutes on an AVX2-only CPU); every fraction is against the peak of the precision training uses here."""
    bf16_here = cpu_kind == "zen4" and capability.real_capabilities().check("bf16").runs
    simulate_cpu(cpu_kind, within_real=True)
    res = _train(2, ("fp32", "bf16"))
    timed = ["fp32", "bf16"] if bf16_here else ["fp32"]
    assert list(res["median_s"]) == timed and (("bf16" in res["skipped"]) is not bf16_here)
    assert res["peak_precision"] == ("bf16" if bf16_here else "fp32")
    assert res["gflop_per_step"] > 0
    assert set(res["matmul_peak_gflops"]) == {"fp32", res["peak_precision"]}
    assert all(v > 0 and math.isfinite(v) for v in res["matmul_peak_gflops"].values())
    for p in timed:
        peak = res["matmul_peak_gflops"][res["peak_precision"]]
        assert res["fraction_of_peak"][p] == pytest.approx(res["gflops"][p] / peak)
        assert res["gflops"][p] == pytest.approx(res["gflop_per_step"] / res["median_s"][p])


def test_training_reads_the_peak_after_every_round_and_pairs_each_step_with_it(monkeypatch):
    """A drifting matmul peak: each step is judged against the reading taken right after it."""
    readings = iter([100.0, 400.0, 100.0, 400.0, 50.0])  # the peak precision after rounds 1-4, then fp32
    # bench_training (pspnet/bench/training.py) reads the peak through its own module
    monkeypatch.setattr("pspnet.bench.training.matmul_gflops", lambda *a, **k: next(readings))
    res = bench.bench_training(**TINY_TRAIN, batch=2, steps=4, warmup=0, precisions=("fp32",), matmul_n=128,
                               matmul_reps=2, peak_precision="bf16", **QUIET)
    assert res["peak_readings"] == [100.0, 400.0, 100.0, 400.0]
    assert res["matmul_peak_gflops"] == {"bf16": 250.0, "fp32": 50.0}
    pairs = [res["gflop_per_step"] / t / r for t, r in zip(res["times_s"]["fp32"], res["peak_readings"])]
    assert res["fraction_per_round"]["fp32"] == pytest.approx(statistics.median(pairs))


def test_training_flops_cover_the_backward_pass_and_scale_with_the_batch():
    two, four = _train(2)["gflop_per_step"], _train(4)["gflop_per_step"]
    assert four / two == pytest.approx(2.0, rel=0.05)
    # forward alone: a count without the backward pass would be about this (the step is about 3x)
    torch.manual_seed(0)
    model = PSPNet(PSPNetConfig(num_classes=5, depth=18, head_channels=32, aux_channels=16)).train()
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(2, 3, 64, 64))
    assert two > 2.5 * counter.get_total_flops() / 1e9


def test_matmul_gflops_is_positive():
    assert bench.matmul_gflops(torch.float32, n=64, reps=2, warmup=1) > 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmRSS/VmHWM are read from /proc (Linux)")
def test_memory_reports_peak_and_current_rss_per_case():
    res = bench.bench_memory(depth=18, size=(64, 96), crop=(48, 48), images=2, mode="eager",
                             train={"crop": (48, 48), "batch": 2, "num_classes": 5, "head_channels": 32,
                                    "aux_channels": 16}, train_precisions=("fp32",), **QUIET)
    cases = res["cases"]
    assert [c["case"].split()[2] for c in cases[:2]] == ["whole", "sliding"]
    assert cases[2]["case"].startswith("train PSPNet-18 fp32 batch 2")
    assert res["train"]["crop"] == [48, 48] and res["train"]["depth"] == 18  # bench_training's default depth
    for c in cases:
        assert c["peak_source"] == "VmHWM"
        assert len(c["peak_after_each_mb"]) == len(c["rss_after_each_mb"]) == 2
        assert all(v > 0 for v in (c["rss_before_mb"], *c["peak_after_each_mb"], *c["rss_after_each_mb"]))
        # the high-water mark can only rise within a case, and it is at least the RSS it was reset to
        assert c["rss_before_mb"] <= c["peak_first_mb"] <= c["peak_last_mb"]
        assert all(r <= c["peak_last_mb"] for r in c["rss_after_each_mb"])


def test_memory_refuses_zero_images():
    with pytest.raises(ValueError, match="images"):
        bench.bench_memory(depth=18, size=(64, 64), images=0, **QUIET)


def test_headline_reports_the_default_mode_alone_as_well():
    res = bench.bench_headline(depth=18, size=(64, 64), reps=2, mode="fp32", **QUIET)
    for key in ("fp32_eager_median_s", "fast_median_s", "speedup", "fp32_eager_times_s", "fast_times_s"):
        assert key in res
    assert len(res["fast_alone_times_s"]) == len(res["fast_times_s"]) == 2
    assert all(t > 0 for t in res["fast_alone_times_s"])
    assert res["fast_alone_median_s"] > 0
    assert res["speedup_vs_alone"] == pytest.approx(res["fp32_eager_median_s"] / res["fast_alone_median_s"])


@pytest.mark.parametrize("argv", [["--what", "memroy"], ["--what", "memory", "--memory-size", "big"]])
def test_cli_bench_refuses_bad_arguments_before_measuring(argv, capsys):
    assert main(["bench", *argv]) == 2
    assert "error" in capsys.readouterr().err


def _agreement_script():
    """bench/agreement.py as a module (it is a script beside the package, not part of it)."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "bench" / "agreement.py"
    spec = importlib.util.spec_from_file_location("bench_agreement", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_agreement_record_into_writes_the_measurement_into_the_other_file_only(
        tmp_path, monkeypatch, folder_dataset, tiny_pspnet):
    """--record-into: a train-only model's agreement, measured on images it never trained on, is recorded in the
    file of the model that trained on all of them, naming the measured file; a file of another architecture is
    refused before anything is measured."""
    from pspnet.hub.download import sha256_of
    from pspnet.inference.auto import recorded_int8_agreement
    from pspnet.models.weights import load_weights, save_weights
    script = _agreement_script()
    # int8's own agreement is bench/agreement.py's measurement, not this test's: the fast mode is the fp32 model
    monkeypatch.setattr(script, "prepare_for_inference", lambda model, *a, **k: model)
    data = folder_dataset(tmp_path / "data", splits=("val",), n=2, size=(40, 48))
    measured, target = tmp_path / "train_only.safetensors", tmp_path / "packaged.safetensors"
    save_weights(tiny_pspnet(seed=0).eval(), measured, ["a", "b", "c"])
    save_weights(tiny_pspnet(seed=1).eval(), target, ["a", "b", "c"], include_aux=False)
    args = ["--weights", str(measured), "--data-root", str(data), "--dataset", "folder", "--split", "val",
            "--precision", "int8", "--backend", "onnxruntime", "--calibration-images", "0"]
    assert script.main([*args, "--record-into", str(target)]) == 0
    record = load_weights(target)[1]["int8_agreement"]
    assert record["agreement"] == 1.0 and recorded_int8_agreement(load_weights(target)[1], reduce_range=False) == 1.0
    assert record["measured_on"] == {"weights": measured.name, "sha256": sha256_of(measured)}
    assert "int8_agreement" not in load_weights(measured)[1]

    other = tmp_path / "four_classes.safetensors"
    save_weights(tiny_pspnet(4, seed=1).eval(), other, ["a", "b", "c", "d"])
    before = sha256_of(other)
    with pytest.raises(SystemExit) as e:
        script.main([*args, "--record-into", str(other)])
    assert e.value.code == 2 and sha256_of(other) == before
