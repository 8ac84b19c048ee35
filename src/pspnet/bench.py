"""Benchmarks behind ``pspnet bench`` and ``bench/*.py``: inference latency, training step time (and its
share of the bf16 matmul peak), peak resident memory and the confusion-matrix update, each printed with
the machine it ran on.

Latency is wall-clock time per call (``time.perf_counter``) after warm-up calls, reported as the
median over repetitions with images/s = batch / median. Two modes compared for a ratio run in the
same process, alternating, so that both see the same machine state.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from . import capability, cpu
from .errors import PSPNetError
from .inference.prepare import prepare_for_inference
from .models import PSPNet, PSPNetConfig

__all__ = ["machine_info", "format_machine", "time_calls", "build_model", "MODES", "make_runner",
           "bench_headline", "bench_inference", "bench_training", "bench_memory", "bench_confusion", "parse_size",
           "matmul_gflops"]

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


# ----------------------------------------------------------------------------------------- machine
def machine_info() -> dict[str, Any]:
    """CPU model, core count, what the runtime runs natively (:mod:`pspnet.capability`), the flags
    ``/proc/cpuinfo`` lists (a hint), and library versions."""
    caps = capability.capabilities()
    bf16, why = cpu.bf16_decision()
    return {"cpu": cpu.cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "flags": cpu.reported_flags(), "simulated": caps.facts.simulated,
            "native": [f"{p}/{b}" for p, row in caps.table().items() for b, c in row.items() if c.native],
            "onednn_max_isa": cpu.onednn_isa_cap(),
            "auto_precision": "bf16" if bf16 else "fp32", "auto_precision_why": why,
            "torch": torch.__version__, "onednn": cpu.onednn_available(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "onnxruntime": cpu.onnxruntime_version(), "openvino": cpu.openvino_version(),
            "python": platform.python_version(),
            "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def format_machine(info: dict[str, Any] | None = None) -> str:
    info = info or machine_info()
    openvino = f"openvino {info['openvino']}, " if info.get("openvino") else ""
    simulated = f" (simulated: {capability.SIMULATE_ENV}={info['simulated']})" if info.get("simulated") else ""
    return (f"machine: {info['cpu']}, {info['cores']} cores, torch threads {info['threads']}; "
            f"flags in /proc/cpuinfo: {' '.join(info['flags']) or '(none of interest)'}; "
            f"native here{simulated}: {' '.join(info.get('native', [])) or 'fp32/torch'}"
            f"{'; oneDNN capped at ' + info['onednn_max_isa'] if info.get('onednn_max_isa') else ''}; "
            f"auto precision {info.get('auto_precision')} ({info.get('auto_precision_why')}); torch {info['torch']} "
            f"({info['cpu_capability']}), onnxruntime {info['onnxruntime']}, "
            f"{openvino}python {info['python']}; "
            f"load average (1 min) at start {info['load_average_1m']}")


# ----------------------------------------------------------------------------------------- timing
def time_calls(fn: Callable[[], Any], reps: int = 5, warmup: int = 1) -> list[float]:
    """Wall seconds of ``reps`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def parse_size(text: str) -> tuple[int, int]:
    """``"473"`` or ``"473x473"`` or ``"512x1024"`` (height x width)."""
    parts = text.lower().split("x")
    try:
        if len(parts) == 1:
            return int(parts[0]), int(parts[0])
        if len(parts) == 2:
            return int(parts[0]), int(parts[1])
    except ValueError:
        pass
    raise ValueError(f"size must look like 473 or 512x1024 (height x width), got {text!r}")


def build_model(depth: int = 50, num_classes: int = 19, **kwargs: Any) -> PSPNet:
    """A PSPNet in the original release's layout (deep stem, output stride 8, bins 1-2-3-6, 512-channel
    head) with its initial weights: timing does not depend on the weight values."""
    torch.manual_seed(0)
    return PSPNet(PSPNetConfig(num_classes=num_classes, depth=depth, **kwargs)).eval()


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
    from .inference.auto import recorded_int8_agreements
    from .models.pretrained import default_weights_path
    from .models.weights import read_metadata
    try:
        return recorded_int8_agreements(read_metadata(default_weights_path()))
    except PSPNetError:
        return None


# ----------------------------------------------------------------------------------------- inference
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


# ----------------------------------------------------------------------------------------- training
def matmul_gflops(dtype: torch.dtype = torch.bfloat16, n: int = 2048, reps: int = 10, warmup: int = 3) -> float:
    """GFLOP/s of an ``n x n @ n x n`` ``torch.matmul`` in ``dtype`` (2 n^3 FLOP over the median time):
    the machine's practical peak for that dtype."""
    g = torch.Generator().manual_seed(0)
    x, y = (torch.randn(n, n, generator=g).to(dtype) for _ in range(2))
    med = statistics.median(time_calls(partial(torch.matmul, x, y), reps=reps, warmup=warmup))
    return 2 * n ** 3 / med / 1e9


def native_training_precisions(precisions: Sequence[str], log: Callable[[str], None] = print
                               ) -> tuple[list[str], dict[str, str]]:
    """(the ``precisions`` this CPU trains in natively, why each other one is left out)."""
    skipped = {p: capability.check(p).why for p in precisions
               if p in capability.PRECISIONS and not capability.check(p).native}
    for p, why in skipped.items():
        log(f"  {p} training not timed here: {why}")
    return [p for p in precisions if p not in skipped], skipped


def _training_setup(depth: int, crop: tuple[int, int], batch: int, num_classes: int, channels_last: bool,
                    root: str | Path | None, head_channels: int, aux_channels: int):
    """(step(precision) -> seconds, count_flops() -> FLOP of one step) for a fresh PSPNet in train mode."""
    from torch.utils.flop_counter import FlopCounterMode

    from .data.transforms import normalize
    from .models import PSPNetLoss
    from .training.schedule import sgd
    images, labels = _training_batch(crop, batch, num_classes, root)
    cpu.keep_freed_memory()  # as the trainer does
    torch.manual_seed(0)
    model = PSPNet(PSPNetConfig(num_classes=num_classes, depth=depth, head_channels=head_channels,
                                aux_channels=aux_channels)).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = sgd([{"params": list(model.parameters())}], lr=1e-3, momentum=0.9, weight_decay=1e-4)  # the trainer's
    criterion = PSPNetLoss(0.4, 255, align_corners=model.config.align_corners)
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def forward_backward(dtype: torch.dtype | None) -> None:
        x = normalize(images).contiguous(memory_format=fmt)
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            out = model(x, upsample=False)  # as the trainer does: the loss upsamples
        loss, _ = criterion(out, labels)
        loss.backward()

    def step(precision: str) -> float:
        dtype = cpu.resolve_precision(precision, torch.device("cpu"))
        t = time.perf_counter()
        forward_backward(dtype)
        opt.step()
        return time.perf_counter() - t

    def count_flops() -> float:
        # the counted ops (convolutions, matrix products and their gradients) do the same work in any
        # dtype; no optimizer step, so counting leaves the weights as they were
        with FlopCounterMode(display=False) as counter:
            forward_backward(None)
        opt.zero_grad(set_to_none=True)
        return float(counter.get_total_flops())

    return step, count_flops


def bench_training(depth: int = 18, crop: tuple[int, int] = (192, 256), batch: int = 8, num_classes: int = 11,
                   steps: int = 4, warmup: int = 1, precisions: Sequence[str] = ("fp32", "bf16"),
                   channels_last: bool = True, root: str | Path | None = None, head_channels: int = 256,
                   aux_channels: int = 128, matmul_n: int = 2048, matmul_reps: int = 10,
                   peak_precision: str | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Seconds per SGD step (forward with the aux head, loss, backward, update) per precision, and the
    step's FLOP rate as a fraction of the matmul peak of ``peak_precision`` (default: the precision
    ``train.precision=auto`` trains in here) measured in the same run. Precisions this CPU does not run
    natively are left out with the reason (emulated bf16 training is many times slower than fp32).

    Defaults follow the CamVid CPU recipe (camvid/pspnet_r18_cpu). With ``root`` the
    batch is real CamVid training crops (the recipe's augmentation), otherwise random pixels; the
    step time does not depend on pixel values. Precisions alternate step by step.

    The bf16 peak is read after every round of steps (``matmul_reps`` timed matmuls each), not once:
    on a host whose matrix throughput drifts (a VM's AMX units measured 270-1650 GFLOP/s within
    minutes, docs/benchmarks.md) a single reading can flatter or sink the fraction. Two fractions are
    reported: the median step rate over the median peak reading, and the median over rounds of each
    step's rate over the peak read right after it (``fraction_per_round``), which a drift moves least.
    """
    precisions, skipped = native_training_precisions(precisions, log)
    if peak_precision is None:
        peak_precision = "bf16" if cpu.resolve_precision("auto", torch.device("cpu")) == torch.bfloat16 else "fp32"
    peak_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[peak_precision]
    step, count_flops = _training_setup(depth, crop, batch, num_classes, channels_last, root, head_channels,
                                        aux_channels)
    flop = count_flops()
    for p in precisions:
        for _ in range(warmup):
            step(p)
    times: dict[str, list[float]] = {p: [] for p in precisions}
    readings: list[float] = []
    for _ in range(steps):
        for p in precisions:
            times[p].append(step(p))
        readings.append(matmul_gflops(peak_dtype, matmul_n, matmul_reps, warmup=1))
    peak = {peak_precision: statistics.median(readings)}
    if peak_precision != "fp32":
        peak["fp32"] = matmul_gflops(torch.float32, matmul_n, matmul_reps)
    med = {p: statistics.median(v) for p, v in times.items()}
    rate = {p: flop / m / 1e9 for p, m in med.items()}
    fraction = {p: r / peak[peak_precision] for p, r in rate.items()}
    per_round = {p: statistics.median(flop / t / 1e9 / r for t, r in zip(v, readings)) for p, v in times.items()}
    log(f"training PSPNet-{depth} ({num_classes} classes, head {head_channels}), batch {batch} x {crop[0]}x{crop[1]} "
        f"{'CamVid crops' if root else 'random pixels'}, {steps} alternating steps after {warmup} warm-up each")
    log(f"  matmul peak {matmul_n}^3 in this run: " + ", ".join(f"{p} {v:.1f} GFLOP/s" for p, v in peak.items())
        + f" ({peak_precision}: the precision training uses here; median of {len(readings)} readings, one after "
        f"each round of steps: {min(readings):.0f}-{max(readings):.0f}); one step (forward with aux head, loss, "
        f"backward) counts {flop / 1e9:.1f} GFLOP")
    from .models import kernels
    from .models.loss import upsampled_ce_available
    from .models.max_pool import max_pool_kernel_available
    from .models.norm_act import fused_bn_available

    def on(flag: bool) -> str:
        return "on" if flag else "off"
    log(f"  CPU kernels: batch norm + ReLU {on(fused_bn_available())}, upsampled cross-entropy "
        f"{on(upsampled_ce_available())}, max pooling {on(max_pool_kernel_available())}, pyramid pooling's "
        f"backward as matrix products {on(kernels.enabled())}; malloc keeps freed memory: "
        f"{'yes' if cpu.keep_freed_memory() else 'no'}")
    for p in precisions:
        log(f"  {p:<5s} median {med[p]:7.3f} s/step  ({batch / med[p]:6.2f} images/s), {flop / 1e9:.1f} GFLOP/step, "
            f"{rate[p]:.1f} GFLOP/s = {fraction[p]:.2f} of the {peak_precision} matmul peak "
            f"({peak[peak_precision]:.1f} GFLOP/s, {matmul_n}^3 in this run); per round against the peak read after "
            f"it: {per_round[p]:.2f}")
    res = {"depth": depth, "crop": list(crop), "batch": batch, "steps": steps, "times_s": times,
           "median_s": med, "images_per_s": {p: batch / m for p, m in med.items()},
           "gflop_per_step": flop / 1e9, "gflops": rate, "matmul_n": matmul_n, "matmul_peak_gflops": peak,
           "peak_precision": peak_precision, "peak_readings": readings, "fraction_of_peak": fraction,
           "fraction_per_round": per_round, "skipped": skipped,
           "fused_bn_relu": fused_bn_available(), "fused_upsampled_ce": upsampled_ce_available(),
           "max_pool_kernel": max_pool_kernel_available(),
           "malloc_keeps_freed_memory": cpu.keep_freed_memory()}
    if "fp32" in med and "bf16" in med:
        res["bf16_speedup"] = med["fp32"] / med["bf16"]
        log(f"  bf16 speedup over fp32: {res['bf16_speedup']:.2f}x")
    return res


def _training_batch(crop: tuple[int, int], batch: int, num_classes: int, root: str | Path | None):
    if root is None:
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (batch, 3, *crop), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, num_classes, (batch, *crop), generator=g)
        return images, labels
    from .data.datasets import build_dataset
    from .data.transforms import TrainTransform, to_tensors
    ds = build_dataset("camvid", root, "train")
    tf = TrainTransform(crop, (0.375, 1.0))
    imgs, lbls = [], []
    for i in range(batch):
        tf.seed(i)
        im, lb = to_tensors(*tf(*ds.load(i)))
        imgs.append(im)
        lbls.append(lb)
    return torch.stack(imgs), torch.stack(lbls)


# ----------------------------------------------------------------------------------------- memory
def _status_mb(field: str) -> float | None:
    """A ``/proc/self/status`` field (``VmRSS``, ``VmHWM``) in MB; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Set VmHWM back to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_mb("VmHWM") is not None
    except OSError:
        return False


def _peak_mb(resettable: bool) -> float:
    if resettable:
        return _status_mb("VmHWM")  # type: ignore[return-value]
    import resource
    import sys
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2 ** 20 if sys.platform == "darwin" else 1024)


def _release_freed_memory() -> None:
    gc.collect()  # what the previous case left for the collector is not this case's
    try:  # glibc keeps freed small blocks mapped; hand them back so a case starts from what is in use
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _measure_memory(case: str, fn: Callable[[], Any], n: int) -> dict[str, Any]:
    _release_freed_memory()
    resettable = _reset_peak()
    before = _status_mb("VmRSS")
    peaks, rss = [], []
    for _ in range(n):
        fn()
        peaks.append(_peak_mb(resettable))
        rss.append(_status_mb("VmRSS"))
    return {"case": case, "peak_source": "VmHWM" if resettable else "ru_maxrss", "rss_before_mb": before,
            "peak_first_mb": peaks[0], "peak_last_mb": peaks[-1], "peak_after_each_mb": peaks,
            "rss_after_each_mb": rss}


def _predict_labels(runner: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    from .inference.testtime import predict_logits
    return predict_logits(runner, image, **kwargs).argmax(1)


def bench_memory(depth: int = 50, size: tuple[int, int] = (1024, 2048), num_classes: int = 19, images: int = 4,
                 crop: tuple[int, int] = (713, 713), stride_rate: float = 2 / 3, mode: str = "auto",
                 train: dict[str, Any] | None = None, train_precisions: Sequence[str] = ("fp32", "bf16"),
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Peak resident memory of predicting ``size`` images in ``mode`` (whole image, then sliding windows of
    ``crop``) and of :func:`bench_training`'s step, each case run ``images`` times to show it does not grow.

    ``train``: overrides of :func:`bench_training`'s model and batch arguments (depth, crop, batch,
    num_classes, head_channels, aux_channels, channels_last, root). The peak is Linux's VmHWM, reset before
    each case; elsewhere it is ``ru_maxrss`` since the process started (then a case's peak includes the
    cases before it).
    """
    import inspect

    from .data.transforms import normalize
    if images < 1:
        raise ValueError(f"images must be >= 1, got {images}")
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (1, 3, *size), dtype=torch.uint8, generator=g)
    model = build_model(depth, num_classes)
    cases, resolved = [], {}
    for case, kwargs in (("whole", {"mode": "whole"}),
                         ("sliding", {"mode": "sliding", "crop_size": crop, "stride_rate": stride_rate})):
        # a fresh runner per case, as one `pspnet predict` run has: the first image includes whatever
        # the mode does on its first call (auto picks its mode for that input's shape)
        runner = make_runner(model, mode, normalize(image))
        c = _measure_memory("", partial(_predict_labels, runner, image, **kwargs), images)
        resolved[case] = getattr(runner, "precision", mode)
        where = f"{size[0]}x{size[1]}" if case == "whole" else f"{crop[0]}x{crop[1]} stride {stride_rate:.2f}"
        c["case"] = f"PSPNet-{depth} {mode}->{resolved[case]} {case} {where}"
        cases.append(c)
        del runner
    del model
    sig = inspect.signature(bench_training)  # bench_training's defaults stay the one source of the settings
    keys = ("depth", "crop", "batch", "num_classes", "channels_last", "root", "head_channels", "aux_channels")
    settings = {k: sig.parameters[k].default for k in keys} | (train or {})
    for p in [p for p in train_precisions if p not in native_training_precisions(train_precisions, log)[1]]:
        step = _training_setup(**settings)[0]  # a fresh model per precision, as a training run would start
        cases.append(_measure_memory(f"train PSPNet-{settings['depth']} {p} batch {settings['batch']} x "
                                     f"{settings['crop'][0]}x{settings['crop'][1]}", partial(step, p), images))
        del step
    log(f"peak resident memory, MB ({cases[0]['peak_source']}, reset before each case); "
        f"{images} images (training: steps) per case; RSS = VmRSS after each")
    log(f"{'case':<48s} {'RSS before':>10s} {'peak 1st':>9s} {'peak last':>9s} {'growth':>7s}  RSS after each")
    for c in cases:
        rss = " ".join(f"{r or 0:.0f}" for r in c["rss_after_each_mb"])
        log(f"{c['case']:<48s} {c['rss_before_mb'] or 0:10.0f} {c['peak_first_mb']:9.0f} {c['peak_last_mb']:9.0f} "
            f"{c['peak_last_mb'] - c['peak_first_mb']:7.0f}  {rss}")
    if train_precisions:
        log("  training: SGD's momentum buffers appear with the first update, so steps after the first peak "
            "higher; growth after that would be a leak")
    if cases[0]["peak_source"] != "VmHWM":
        log("  note: /proc/self/clear_refs could not reset the peak here; peaks are ru_maxrss since the process "
            "started, so each case's peak includes the cases before it")
    return {"model": f"PSPNet-{depth}", "size": list(size), "num_classes": num_classes, "mode": mode,
            "resolved_precision": resolved, "crop": list(crop), "stride_rate": stride_rate, "images": images,
            "train": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}, "cases": cases}


# ----------------------------------------------------------------------------------------- metrics
def bench_confusion(shape: tuple[int, int] = (1024, 2048), num_classes: int = 19, reps: int = 20,
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    """``ConfusionMatrix.update`` on one label map of ``shape`` (int64 prediction and target with ~5%
    ignore pixels, as from ``logits.argmax(1)`` and a dataset label)."""
    from .metrics import ConfusionMatrix
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, num_classes, shape, generator=g)
    target[torch.rand(shape, generator=g) < 0.05] = 255
    pred = torch.randint(0, num_classes, shape, generator=g)
    res: dict[str, Any] = {"shape": list(shape), "num_classes": num_classes, "reps": reps}
    for name, (p, t) in {"int64": (pred, target), "uint8 target": (pred, target.to(torch.uint8))}.items():
        cm = ConfusionMatrix(num_classes)
        times = time_calls(partial(cm.update, p, t), reps=reps, warmup=2)
        med = statistics.median(times)
        res[name] = {"median_ms": med * 1000, "times_ms": [x * 1000 for x in times]}
        log(f"ConfusionMatrix.update {shape[0]}x{shape[1]} ({name}, {num_classes} classes): "
            f"median {med * 1000:.2f} ms over {reps} runs")
    return res
