"""Precision decisions for this CPU, from :mod:`pspnet.capability`'s answers (what the runtime can run,
never the flag file): the precision ``auto`` resolves to for training (autocast) and inference, whether
PyTorch's oneDNN fused convolutions run, and what a timing here depends on.

Where bf16 runs natively the answer is not always yes. avx512_bf16 without AMX is a Zen 4, where bf16
matrix products run 2.9x as fast as fp32, or for example a Sapphire Rapids Xeon whose AMX is hidden (a
Linux kernel before 5.16, a hypervisor that does not pass it on), where they run at 0.6x and bf16
training and inference were 1.4x *slower* than fp32 (docs/benchmarks.md). So on such a CPU a short
measured probe decides (:func:`bf16_decision`), cached per machine. Where bf16 does not run (an AVX2-only
CPU: PyTorch refuses bf16 convolutions there) or runs only emulated, it is never chosen; an explicit
bf16 is refused with the reason (inference) or falls back to fp32 with a warning (training).

Importing this module reads and changes nothing.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import statistics
import time
from typing import Any

import torch

from . import capability
from .capability import cpu_model
from .files import pspnet_home, read_json_cache, write_json_cache

__all__ = ["REPORTED_FLAGS", "cpu_model", "reported_flags", "onednn_available", "resolve_precision",
           "resolve_inference_precision", "ALLOCATOR_ENV", "keep_freed_memory", "ONEDNN_ISA_ENV", "onednn_isa_cap",
           "timing_identity", "BF16_MIN_SPEEDUP", "bf16_speedup", "bf16_decision"]

log = logging.getLogger("pspnet.cpu")

ONEDNN_ISA_ENV = "ONEDNN_MAX_CPU_ISA"
ALLOCATOR_ENV = "PSPNET_KEEP_FREED_MEMORY"
# the flags that matter for this project's speed, in the order benchmarks print them (a report, not a decision)
REPORTED_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
                  "amx_tile", "amx_bf16", "amx_int8", "avx_vnni")


def reported_flags() -> list[str]:
    """The :data:`REPORTED_FLAGS` that ``/proc/cpuinfo`` lists, for benchmark reports: a hint of which CPU
    this is, never what decides (an emulator or a hypervisor can make the file disagree with the CPU)."""
    flags = capability._cpuinfo()[1]
    return [f for f in REPORTED_FLAGS if f in flags]


def onednn_available(device: torch.device | str = "cpu") -> bool:
    """True where PyTorch's oneDNN fused-convolution ops can run (x86/ARM CPUs with mkldnn)."""
    return torch.device(device).type == "cpu" and capability.capabilities().facts.mkldnn


def onnxruntime_version() -> str | None:
    """ONNX Runtime's version, None where it is not installed: its int8 kernels, and so which mode is
    fastest, change with it (benchmarks report it; ``auto``'s probe cache is keyed on it)."""
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime.__version__


def openvino_version() -> str | None:
    """OpenVINO's version, None where it is not installed (an optional backend; ``auto``'s probe
    cache is keyed on it)."""
    try:
        import openvino
    except ImportError:
        return None
    return openvino.__version__


BF16_MIN_SPEEDUP = 1.2
"""How much faster than fp32 bf16 matrix products must run for ``auto`` to pick bf16 (it costs precision)."""
_PROBE_SIZE, _PROBE_ROUNDS = 1024, 5


def onednn_isa_cap() -> str | None:
    """The instruction-set cap ``ONEDNN_MAX_CPU_ISA`` puts on oneDNN, None where unset. torch's oneDNN and
    OpenVINO's CPU plugin both honour it, so it changes what a timing measures."""
    return os.environ.get(ONEDNN_ISA_ENV)


def timing_identity() -> dict[str, Any]:
    """What a timing on this machine depends on besides the work timed: the CPU (its model, and what the
    runtime reports it can run), oneDNN's cap, torch's version and the thread count. The per-machine probe
    caches (the bf16 probe here, ``auto``'s in :mod:`pspnet.inference.auto`) are keyed on it."""
    facts = capability.capabilities().facts
    return {"cpu": cpu_model(), "runtime": {k: v for k, v in vars(facts).items() if isinstance(v, (bool, str))},
            "onednn_isa": onednn_isa_cap(), "torch": torch.__version__, "threads": torch.get_num_threads()}


def _bf16_probe_key() -> str:
    """What the probe's result depends on: the CPU, oneDNN's ISA cap, torch, threads."""
    ident = json.dumps(timing_identity(), sort_keys=True)
    return hashlib.sha256(ident.encode()).hexdigest()[:32]


def _measure_bf16_speedup() -> float:
    """fp32 time / bf16 time of a 1024^3 matrix product (oneDNN), medians of 5 alternating rounds."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(_PROBE_SIZE, _PROBE_SIZE, generator=g), torch.randn(_PROBE_SIZE, _PROBE_SIZE, generator=g)
    pairs = {"fp32": (a, b), "bf16": (a.bfloat16(), b.bfloat16())}
    times: dict[str, list[float]] = {k: [] for k in pairs}
    with torch.no_grad():
        for x, y in pairs.values():  # oneDNN builds its kernels on the first call
            torch.matmul(x, y)
        for _ in range(_PROBE_ROUNDS):
            for k, (x, y) in pairs.items():
                t = time.perf_counter()
                torch.matmul(x, y)
                times[k].append(time.perf_counter() - t)
    return statistics.median(times["fp32"]) / statistics.median(times["bf16"])


@functools.cache
def _cached_bf16_speedup(key: str) -> float:
    path = pspnet_home() / "bf16_probe.json"
    value = read_json_cache(path).get(key)
    if isinstance(value, (int, float)) and value > 0:
        return float(value)
    speedup = _measure_bf16_speedup()
    try:
        write_json_cache(path, key, speedup)
    except OSError:  # a read-only home: measure again in the next process
        pass
    return speedup


def bf16_speedup() -> float:
    """How many times as fast as fp32 a bf16 matrix product runs on this machine: measured once (about
    0.2 s) and cached in ``$PSPNET_HOME/bf16_probe.json``, keyed by the CPU, its flags, oneDNN's ISA
    cap (``ONEDNN_MAX_CPU_ISA``), torch's version and the thread count."""
    return _cached_bf16_speedup(_bf16_probe_key())


def bf16_decision() -> tuple[bool, str]:
    """(whether bf16 is this CPU's faster precision, why): no where bf16 does not run or runs only emulated
    (:mod:`pspnet.capability`); yes with AMX-BF16 (5x fp32's matrix throughput); with avx512_bf16 alone,
    :func:`bf16_speedup` >= :data:`BF16_MIN_SPEEDUP`."""
    caps = capability.capabilities()
    bf16 = caps.check("bf16")
    if not bf16.runs or not bf16.native:
        return False, f"bf16 {'does not run' if not bf16.runs else 'is not native'} here: {bf16.why}"
    if caps.facts.amx:
        return True, "AMX-BF16"
    speedup = bf16_speedup()
    verdict = "faster" if speedup >= BF16_MIN_SPEEDUP else "not enough faster"
    return speedup >= BF16_MIN_SPEEDUP, (f"avx512_bf16 without AMX, and bf16 matrix products measured {speedup:.2f}x "
                                         f"fp32's speed here: {verdict} (bound {BF16_MIN_SPEEDUP}x)")


def _native_bf16(device: torch.device) -> bool:
    """bf16 is native and pays off on ``device``: a GPU that supports it, a CPU where :func:`bf16_decision`
    says so."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bf16_decision()[0]


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Training autocast dtype: fp16 on CUDA, bf16 on CPUs where it is native and faster
    (:func:`bf16_decision`), else None (fp32). An explicit ``bf16`` on a CPU where bf16 does not run, or
    runs only emulated (many times slower than fp32 for training), falls back to fp32 with a warning."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        if device.type == "cpu":
            cap = capability.check("bf16", "torch", device)
            if not cap.runs or not cap.native:
                log.warning("train.precision=bf16: %s; training in fp32 instead (set train.precision=fp32 or auto "
                            "to silence this)", cap.why)
                return None
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if _native_bf16(device):
        return torch.bfloat16
    return torch.float16 if device.type == "cuda" else None


def resolve_inference_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """Inference precision: ``auto`` -> ``bf16`` where the CPU has native bf16 that is faster than fp32
    (:func:`bf16_decision`) or on a GPU that supports it, else ``fp32``; any other value is returned as
    it is (``prepare_for_inference`` checks it against :mod:`pspnet.capability` for its backend).

    int8 is never chosen here: ``auto``'s int8 candidates are weighed in :mod:`pspnet.inference.auto`.
    """
    if precision != "auto":
        return precision
    return "bf16" if _native_bf16(torch.device(device)) else "fp32"


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters, <malloc.h>


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the kernel.

    A training step frees and allocates its large activations again every step. glibc serves blocks
    of 32 MB and more from fresh ``mmap`` pages, and gives freed heap memory back above 128 KB; every
    reuse then page-faults the memory in again (about 70 000 faults, some 10% of a CamVid bf16 step on
    a Xeon with AMX, docs/benchmarks.md). With no ``mmap`` and a 1 GB trim threshold the process keeps
    its peak heap instead, so resident memory stays at the step's peak and stops moving. Called once
    per process by the trainer and the training benchmark; glibc Linux only (False elsewhere), and
    ``PSPNET_KEEP_FREED_MEMORY=0`` leaves malloc alone.
    """
    if os.environ.get(ALLOCATOR_ENV, "1") == "0" or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    import ctypes
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        return False
