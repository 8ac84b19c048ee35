"""Benchmarks behind ``pspnet bench`` and ``bench/*.py``: inference latency, training step time (and its
share of the bf16 matmul peak), peak resident memory and the confusion-matrix update, each printed with
the machine it ran on.

Latency is wall-clock time per call (``time.perf_counter``) after warm-up calls, reported as the
median over repetitions with images/s = batch / median. Two modes compared for a ratio run in the
same process, alternating, so that both see the same machine state.

Where things are: :mod:`.machine` (the machine a result is printed with), :mod:`.timing` (timed calls,
sizes, the model to time), :mod:`.inference` (:data:`MODES`, the headline and latency per mode),
:mod:`.training` (step time against the matmul peak), :mod:`.memory` (peak resident memory) and
:mod:`.metrics` (the confusion-matrix update). The names below are the ones ``pspnet bench`` and
``bench/*.py`` use.
"""

from __future__ import annotations

from .inference import MODES, bench_headline, bench_inference, make_runner, mode_capability, native_modes
from .machine import format_machine, machine_info
from .memory import bench_memory
from .metrics import bench_confusion
from .timing import build_model, parse_size, time_calls
from .training import bench_training, matmul_gflops, native_training_precisions

__all__ = ["machine_info", "format_machine", "time_calls", "build_model", "MODES", "make_runner",
           "bench_headline", "bench_inference", "bench_training", "bench_memory", "bench_confusion", "parse_size",
           "matmul_gflops", "mode_capability", "native_modes", "native_training_precisions"]
