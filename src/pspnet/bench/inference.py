"""Inference latency: the modes a benchmark can time (:data:`MODES`), the headline comparison (plain fp32
eager vs the default CPU mode, alternating in one process) and latency per depth, size and mode."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch

from .. import capability
from ..errors import PSPNetError
from ..inference.prepare import prepare_for_inference
from ..models import PSPNet
from .timing import build_model, time_calls

# mode name -> prepare_for_inference keyword arguments; "eager" is the plain model (fp32, unfolded, NCHW)
MODES: dict[str, dict[str, Any] | None] = {
    "eager": None,
    "auto": {"precision": "auto"},
    "fp32": {"precision": "fp32"},
    "bf16": {"precision": "bf16"},
    "fp32-unfused": {"precision": "fp32", "onednn": False},
    "bf16-unfused": {"precision": "bf16", "onednn": False},
    "fp32-unfactored": {"precision": "fp32", "factor_head": False},
    "bf16-unfactored": {"precision": "bf16", "factor_head": False},
    "fp32+compile": {"precision": "fp32", "compile": True},
    "bf16+compile": {"precision": "bf16", "compile": True},
    "int8": {"precision": "int8"},
    "int8-unfactored": {"precision": "int8", "factor_head": False},
    "ort-fp32": {"precision": "fp32", "backend": "onnxruntime"},
    "ort-int8": {"precision": "int8", "backend": "onnxruntime"},
    "ort-fp32-unfactored": {"precision": "fp32", "backend": "onnxruntime", "factor_head": False},
    "ort-int8-unfactored": {"precision": "int8", "backend": "onnxruntime", "factor_head": False},
    "ov-fp32": {"precision": "fp32", "backend": "openvino"},
    "ov-bf16": {"precision": "bf16", "backend": "openvino"},
    "ov-int8": {"precision": "int8", "backend": "openvino"},
}


def mode_capability(mode: str) -> capability.Capability:
    """Whether ``mode`` (a key of :data:`MODES`) runs natively here (``auto`` and ``eager`` always do)."""
    spec = MODES[mode]
    if spec is None or spec["precision"] == "auto":
        return capability.Capability("fp32", "torch", True, True)
    return capability.check(spec["precision"], spec.get("backend", "torch"))


def native_modes(modes: Sequence[str], log: Callable[[str], None] = print) -> list[str]:
    """The ``modes`` this CPU runs natively; each other one is listed with the reason (emulated bf16 on a
    CPU without it would take many times fp32's time and tell nothing)."""
    keep = []
    for mode in modes:
        can = mode_capability(mode)
        if can.native:
            keep.append(mode)
        else:
            log(f"  {mode}: not timed here: {'does not run' if not can.runs else 'not native'}: {can.why}")
    return keep


def make_runner(model: PSPNet, mode: str, example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The callable that runs ``mode`` (a key of :data:`MODES`) on ``model``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
    spec = MODES[mode]
    if spec is None:
        return model
    calibration = [example] if spec["precision"] == "int8" else None
    extra = {"int8_agreement": packaged_int8_agreements()} if spec["precision"] == "auto" else {}
    return prepare_for_inference(model, **spec, calibration=calibration, **extra)


def packaged_int8_agreements() -> dict[str, float] | None:
    """The int8 agreements (per backend) the packaged CamVid model records: mode ``auto`` in a benchmark runs what
    ``pspnet predict`` runs by default (for that model), whatever weights are timed."""
    from ..inference.auto import recorded_int8_agreements
    from ..models.pretrained import default_weights_path
    from ..models.weights import read_metadata
    try:
        return recorded_int8_agreements(read_metadata(default_weights_path()))
    except PSPNetError:
        return None


@torch.no_grad()
def bench_headline(depth: int = 50, size: tuple[int, int] = (473, 473), num_classes: int = 19, reps: int = 5,
                   mode: str = "auto", log: Callable[[str], None] = print) -> dict[str, Any]:
    """Plain fp32 eager vs ``mode`` (the default CPU mode), alternating in one process."""
    model = build_model(depth, num_classes)
    x = torch.randn(1, 3, *size)
    fast = make_runner(model, mode, x)
    for _ in range(2):  # warm-up both (oneDNN primitive creation, first-touch allocations)
        model(x)
        fast(x)
    resolved = getattr(fast, "precision", mode)  # after a call: auto decides on its first input
    # alone as well: alternating with eager can cost the fast mode its caches, so both figures are shown
    alone_t = time_calls(partial(fast, x), reps=reps, warmup=0)
    base_t, fast_t = [], []
    for _ in range(reps):
        t = time.perf_counter()
        model(x)
        base_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        fast(x)
        fast_t.append(time.perf_counter() - t)
    agree = float((model(x).argmax(1) == fast(x).argmax(1)).float().mean())
    b, f, a = statistics.median(base_t), statistics.median(fast_t), statistics.median(alone_t)
    res = {"model": f"PSPNet-{depth}", "size": list(size), "num_classes": num_classes, "reps": reps,
           "mode": mode, "resolved_precision": resolved, "backend": getattr(fast, "backend", "torch"),
           "fp32_eager_median_s": b, "fast_median_s": f, "speedup": b / f,
           "fp32_eager_times_s": base_t, "fast_times_s": fast_t, "argmax_agreement_random_weights": agree,
           "fast_alone_median_s": a, "fast_alone_times_s": alone_t, "speedup_vs_alone": b / a}
    log(f"PSPNet-{depth} {size[0]}x{size[1]}, {num_classes} classes, eval, batch 1, {reps} runs of the default "
        f"mode alone, then {reps} alternating runs")
    if getattr(fast, "choice", None) is not None:
        res["auto_choice"] = fast.choice.describe()
        log(f"  {fast.choice.describe()}")
    log(f"  plain fp32 eager                                  median {b * 1000:8.1f} ms  ({1 / b:6.2f} images/s)")
    used = f"{mode}->{resolved}/{res['backend']}"
    log(f"  default CPU mode {used:<17s} alternating median {f * 1000:8.1f} ms  ({1 / f:6.2f} images/s)")
    log(f"  default CPU mode {used:<17s} alone       median {a * 1000:8.1f} ms  ({1 / a:6.2f} images/s)")
    log(f"  speedup (fp32 eager / default): {b / f:.2f}x alternating, {b / a:.2f}x against the default alone   "
        f"(argmax agreement on this random-weight model: {agree * 100:.2f}%)")
    return res


@torch.no_grad()
def bench_inference(depths: Sequence[int] = (18, 50, 101), sizes: Sequence[tuple[int, int]] = ((473, 473),),
                    modes: Sequence[str] = ("eager", "fp32", "bf16"), num_classes: int = 19, reps: int = 3,
                    warmup: int = 1, batch: int = 1, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Median latency and images/s per (depth, size, mode)."""
    rows = []
    modes = native_modes(modes, log)
    log(f"{'model':<11s} {'size':>9s} {'mode':<19s} {'median ms':>10s} {'images/s':>9s} {'setup s':>8s}")
    for depth in depths:
        model = build_model(depth, num_classes)
        for size in sizes:
            x = torch.randn(batch, 3, *size)
            for mode in modes:
                t0 = time.perf_counter()
                try:
                    run = make_runner(model, mode, x)
                    run(x)  # first call: export / quantisation / compilation happen here
                except Exception as e:  # noqa: BLE001 - a mode that cannot run here is reported, not fatal
                    log(f"PSPNet-{depth:<4d} {size[0]:>4d}x{size[1]:<4d} {mode:<19s} failed: {type(e).__name__}: "
                        f"{str(e).splitlines()[0][:120]}")
                    rows.append({"depth": depth, "size": list(size), "mode": mode, "error": str(e)})
                    continue
                setup = time.perf_counter() - t0
                times = time_calls(partial(run, x), reps=reps, warmup=max(0, warmup - 1))
                med = statistics.median(times)
                rows.append({"depth": depth, "size": list(size), "mode": mode, "batch": batch, "median_s": med,
                             "images_per_s": batch / med, "times_s": times, "setup_s": setup})
                log(f"PSPNet-{depth:<4d} {size[0]:>4d}x{size[1]:<4d} {mode:<19s} {med * 1000:10.1f} "
                    f"{batch / med:9.2f} {setup:8.1f}")
                del run  # free the exported / compiled model before the next mode
    return rows
