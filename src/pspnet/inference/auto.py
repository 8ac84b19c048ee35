"""``precision="auto"``: the fastest mode that keeps the labels on *this* CPU.

Which mode is fastest depends on the CPU: on an AMD Zen 4 (avx512_bf16 + VNNI, no AMX) ONNX Runtime
int8 runs PSPNet-50 at 473x473 about twice as fast as bf16, on an Intel Xeon with AMX bf16 was the
faster (docs/benchmarks.md). So ``auto`` decides in two steps:

1. **Features.** The torch candidate is bf16 where the CPU has native bf16 that runs faster than fp32
   (:func:`pspnet.cpu.bf16_decision`: AMX, or avx512_bf16 alone with a measured matrix-product probe),
   else fp32. int8 is a candidate on three backends, ONNX Runtime, torch (PT2E lowered to oneDNN
   by inductor, :mod:`.int8`, where torchao is installed) and OpenVINO (:mod:`.openvino`, where it
   is installed), each only where the CPU has int8 dot-product instructions (VNNI or AMX-INT8), the
   backend's library is installed and the weights are known to keep the labels in int8 *on that
   backend*: their file records an argmax agreement with fp32 of at least :data:`AGREEMENT_BOUND`
   (metadata :data:`AGREEMENT_KEYS`, measured by ``bench/agreement.py --record``). With one
   candidate the features decide.
2. **Probe.** With more, all run on the input's shape (two warm-up calls, then :data:`PROBE_ROUNDS`
   alternating calls on a random image) and the fastest wins; when the caller says how many calls
   the job makes (``pspnet predict`` on N images), the one with the least setup + N x time per call
   wins, so a single image is not worth int8's quantisation. The result is cached per machine in
   ``$PSPNET_HOME/auto_mode.json`` (default ``~/.cache/pspnet``), keyed by the CPU, its flags, the
   thread count, oneDNN's instruction-set cap (``ONEDNN_MAX_CPU_ISA``), the library versions (pspnet's
   own included), the network's architecture and the input shape, so the probe runs once. Timing does
   not depend on the weight values, so the key holds no weights.

int8 calibrates its activation ranges on the first input batch it sees (:mod:`.calibration`); the
recorded agreement is measured the same way. ONNX Runtime's calibration holds every activation of
that batch at once (about 2.3 GB for PSPNet-50 at 473x473, 10 times that for a whole 1024x2048
Cityscapes frame), and OpenVINO's int8 is calibrated by the same quantiser, so neither is
considered where that would take more than half the free memory (torch's observers keep only
running ranges).

Why three int8 backends: which is faster depends on the CPU's int8 units. On a Zen 4 (VNNI) ONNX
Runtime's int8 beats torch's; torch's goes through oneDNN and OpenVINO's through its own kernels,
both of which use AMX-INT8 on a Xeon that has it (docs/benchmarks.md). The probe, not a rule, decides.
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import capability, cpu
from ..files import HOME_ENV, pspnet_home, read_json_cache, write_json_cache
from ..version import __version__

log = logging.getLogger("pspnet.fast")

__all__ = ["AGREEMENT_BOUND", "INT8_BACKENDS", "AGREEMENT_KEYS", "CACHE_ENV", "AutoChoice",
           "Int8Agreement", "auto_cache_path", "torch_candidate", "int8_agreements", "int8_unavailable_reason",
           "int8_candidates", "choose_from_features", "calibration_bytes", "available_memory", "choose_auto",
           "recorded_int8_agreement", "recorded_int8_agreements", "agreement_key",
           "REDUCED_RANGE_SUFFIX", "cached_choice", "candidates", "one_line",
           "fp32_engines", "FP32_ENGINES"]

AGREEMENT_BOUND = 0.995
"""The least argmax agreement with fp32 a lower-precision mode must keep to be chosen automatically."""
CACHE_ENV = HOME_ENV
PROBE_WARMUP, PROBE_ROUNDS = 2, 3
FEW_CALLS = 10
"""At most this many calls, int8 cannot win back its setup, so no probe either. int8 wins only where
``calls x (torch's time - int8's time) > int8's setup``, so it needs more calls than its setup lasts
torch calls. Every probe in docs/benchmarks.md, both CPU kinds and every backend, measured a setup of at
least 11 of the torch candidate's calls (the least: int8/torch at 1024x2048 on the Xeon, 34.1 s against
3.1 s a call; 17-40 on the Zen 4). A first job of a few images on a new machine was paying a 40-60 s
probe to run bf16 anyway."""
INT8_BACKENDS = ("onnxruntime", "torch", "openvino")
"""The backends int8 may run on, in the order the probe tries them."""
AGREEMENT_KEYS = {"onnxruntime": "int8_agreement", "torch": "int8_agreement_torch",
                  "openvino": "int8_agreement_openvino"}
"""The weight-file metadata key that records each int8 backend's agreement (``bench/agreement.py --record``)."""
REDUCED_RANGE_SUFFIX = "_7bit"
"""Appended to :data:`AGREEMENT_KEYS` for the agreement of the 7-bit quantisation that CPUs without VNNI run
(``bench/agreement.py --reduce-range --record``): a different graph, so a measurement of its own."""


def agreement_key(backend: str, reduce_range: bool = False) -> str:
    """The metadata key of ``backend``'s int8 agreement, 8-bit or (``reduce_range``) 7-bit."""
    return AGREEMENT_KEYS[backend] + (REDUCED_RANGE_SUFFIX if reduce_range else "")

Int8Agreement = float | Mapping[str, float] | None
"""What callers pass as ``int8_agreement``: None (nothing recorded), one number (the ONNX Runtime
record, as before there were two int8 backends) or ``{backend: agreement}``."""


@dataclass
class AutoChoice:
    """The mode ``auto`` picked, and why (``reason``); ``times_ms`` holds the probe's medians per call,
    ``setup_ms`` each candidate's one-off cost (building, int8 quantisation, the first call)."""

    precision: str
    backend: str
    reason: str
    times_ms: dict[str, float] = field(default_factory=dict)
    setup_ms: dict[str, float] = field(default_factory=dict)
    cached: bool = False

    @property
    def mode(self) -> str:
        return f"{self.precision}/{self.backend}"

    def describe(self) -> str:
        probe = ""
        if self.times_ms:
            probe = " (" + ", ".join(f"{k} {v:.0f} ms per call" + (
                f" + {self.setup_ms[k] / 1000:.1f} s setup" if k in self.setup_ms else "")
                for k, v in self.times_ms.items()) + \
                (", cached probe" if self.cached else "") + ")"
        return f"auto -> {self.mode}: {self.reason}{probe}"


def auto_cache_path() -> Path:
    """``$PSPNET_HOME/auto_mode.json`` (default ``~/.cache/pspnet/auto_mode.json``)."""
    return pspnet_home() / "auto_mode.json"


def recorded_int8_agreement(meta: dict[str, Any] | None, backend: str = "onnxruntime",
                            reduce_range: bool | None = None) -> float | None:
    """The int8 argmax agreement on ``backend`` a weight file's metadata records, or None: of the 7-bit
    quantisation where ``reduce_range`` (default: where this CPU needs it, :mod:`pspnet.capability`)."""
    if reduce_range is None:
        reduce_range = _needs_reduced_range(backend)
    rec = (meta or {}).get(agreement_key(backend, reduce_range))
    value = rec.get("agreement") if isinstance(rec, dict) else rec
    return float(value) if isinstance(value, (int, float)) and 0 <= value <= 1 else None


def _needs_reduced_range(backend: str) -> bool:
    """int8 on ``backend`` runs here without int8 dot-product instructions, so in 7 bits."""
    can = capability.check("int8", backend)
    return can.runs and not can.native


def recorded_int8_agreements(meta: dict[str, Any] | None, reduce_range: bool | None = None) -> dict[str, float]:
    """``{backend: agreement}`` for every int8 backend the metadata records a measurement of, for the
    quantisation this CPU runs (7-bit where it has no VNNI) unless ``reduce_range`` says which."""
    found = {b: recorded_int8_agreement(meta, b, reduce_range) for b in INT8_BACKENDS}
    return {b: v for b, v in found.items() if v is not None}


def int8_agreements(int8_agreement: Int8Agreement) -> dict[str, float]:
    """``int8_agreement`` as ``{backend: agreement}`` (a single number is the ONNX Runtime record)."""
    if int8_agreement is None:
        return {}
    if isinstance(int8_agreement, Mapping):
        return {b: float(v) for b, v in int8_agreement.items() if v is not None}
    return {"onnxruntime": float(int8_agreement)}


def torch_candidate(device: torch.device) -> tuple[str, str]:
    """``(precision, "torch")``: bf16 where it is native on ``device``, else fp32."""
    return cpu.resolve_inference_precision("auto", device), "torch"


def int8_unavailable_reason(device: torch.device, int8_agreement: Int8Agreement,
                            backend: str = "onnxruntime") -> str | None:
    """Why int8 on ``backend`` is not a candidate here, or None when it is."""
    if device.type != "cpu":
        return f"int8 runs on the CPU only (device {device.type})"
    can = capability.check("int8", backend, device)
    if not can.runs:
        return can.why
    agreement = int8_agreements(int8_agreement).get(backend)
    if agreement is None:
        bits = "7-bit (this CPU has no VNNI) " if not can.native else ""
        flag = " --reduce-range" if not can.native else ""
        return f"the weights record no {bits}int8 agreement measurement on {backend} " \
               f"(bench/agreement.py --backend {backend}{flag} --record)"
    if agreement < AGREEMENT_BOUND:
        return f"the weights keep only {agreement * 100:.2f}% of the fp32 labels in int8 on {backend} " \
               f"(bound {AGREEMENT_BOUND * 100:.1f}%)"
    return None


def int8_candidates(device: torch.device, int8_agreement: Int8Agreement) -> tuple[list[str], dict[str, str]]:
    """(the int8 backends that are candidates here, why each other one is not)."""
    why = {b: int8_unavailable_reason(device, int8_agreement, b) for b in INT8_BACKENDS}
    return [b for b, w in why.items() if w is None], {b: w for b, w in why.items() if w is not None}


def _why_not(reasons: dict[str, str]) -> str:
    """One reason where every backend has the same one (the CPU, the device), else one per backend."""
    if len(set(reasons.values())) == 1:
        return next(iter(reasons.values()))
    return "; ".join(f"{b}: {w}" for b, w in reasons.items())


def _torch_mode_without_int8(device: torch.device, why_not: dict[str, str]) -> AutoChoice:
    precision, backend = torch_candidate(device)
    if device.type == "cpu":
        native = f"{precision} because of {cpu.bf16_decision()[1]}"
    else:
        native = "native bf16" if precision == "bf16" else "no native bf16"
    return AutoChoice(precision, backend,
                      reason=f"{native} on this {device.type}; int8 not considered: {_why_not(why_not)}")


FP32_ENGINES = ("onnxruntime", "openvino")


def fp32_engines(device: torch.device) -> list[str]:
    """The other fp32 engines that join the probe where the torch candidate is fp32 (no native bf16: an
    AVX2-only CPU, AVX-512 without bf16, ARM64): they compute the same function, so they need no agreement
    record, and their kernels can be faster than PyTorch's there (with PyTorch's oneDNN capped at AVX2 on
    a Xeon, ONNX Runtime's fp32 ran 741 ms against torch's 1349 ms). Where bf16 is native, it is faster."""
    if device.type != "cpu" or torch_candidate(device)[0] != "fp32":
        return []
    return [b for b in FP32_ENGINES if capability.check("fp32", b).native]


def candidates(device: torch.device, int8_agreement: Int8Agreement) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(the modes ``auto`` weighs here, torch's first; why each int8 backend is not one)."""
    backends, why_not = int8_candidates(device, int8_agreement)
    return ([torch_candidate(device)] + [("fp32", b) for b in fp32_engines(device)]
            + [("int8", b) for b in backends]), why_not


def choose_from_features(device: torch.device, int8_agreement: Int8Agreement,
                         calls: int | None = None) -> AutoChoice | None:
    """The torch mode, when the device, the CPU's capabilities or the weights leave no other candidate, or
    the job is too short for another engine's setup to pay (no input shape is needed for that); None when
    only a probe can decide."""
    found, why_not = candidates(device, int8_agreement)
    if len(found) == 1:
        return _torch_mode_without_int8(device, why_not)
    if calls is not None and calls <= FEW_CALLS:
        return AutoChoice(*found[0], reason=_few_calls(calls))
    return None


def _few_calls(calls: int) -> str:
    return (f"{calls} call(s): another engine's setup (a graph export, and for int8 an fp32 calibration pass, at "
            f"this shape) costs more than it could save")


def calibration_bytes(net: torch.nn.Module, shape: tuple[int, ...]) -> int:
    """About how much memory the ONNX Runtime and OpenVINO backends' int8 graph takes to make at ``shape``,
    beyond the process: the fixed-shape export and ONNX Runtime's calibration pass, which frees each
    activation once its range is taken (:func:`pspnet.inference.onnxruntime.calibration_in_priority_order`).
    Four copies of the weights plus a tenth of the layer outputs, counted on a small input and scaled to
    ``shape``'s pixels. Measured for PSPNet-50 (Zen 4, onnxruntime 1.32, peak RSS above the process):
    0.80, 0.98, 1.76 and 2.03 GB at 473x473, 713x713, 1024x2048 and 4x713x713, against 0.95, 1.16, 2.32
    and 2.27 GB estimated here. Where the calibration cannot run in that order, it keeps every activation
    to the end of the pass: 1.5x the layer outputs (2.9 GB at 473x473, about 23 GB at 1024x2048)."""
    from .onnxruntime import calibration_frees_activations
    total = [0]

    def count(module, inputs, output):
        if isinstance(output, torch.Tensor):
            total[0] += output.numel() * 4
    side = 97
    leaves = [m for m in net.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(1, 3, side, side, device=next(net.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    pixels = shape[0] * shape[-2] * shape[-1] if len(shape) == 4 else side * side
    activations = total[0] * pixels / (side * side)
    if not calibration_frees_activations():
        return int(1.5 * activations)
    weights = sum(p.numel() * 4 for p in net.parameters())
    return int(4 * weights + 0.1 * activations)


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo in bytes (None where unreadable)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cache_key(net: Any, shape: tuple[int, ...], candidates: list[tuple[str, str]]) -> str:
    """``net``: the network, or its config (what the probe's timing depends on)."""
    config = net if hasattr(net, "to_dict") else getattr(net, "config", None)
    ident = {**cpu.timing_identity(),  # its runtime answers hold the onnxruntime, openvino and torchao versions
             "pspnet": __version__,  # our own fast paths change between releases too
             "config": config.to_dict() if config is not None else type(net).__name__,
             "shape": list(shape), "candidates": [list(c) for c in candidates]}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]


def _cached_entry(path: Path, key: str, names: set[str]) -> dict[str, Any] | None:
    entry = read_json_cache(path).get(key)
    good = isinstance(entry, dict) and all(isinstance(entry.get(k), dict) and set(entry[k]) == names
                                           for k in ("times_ms", "setup_ms"))
    return entry if good else None


def cached_choice(config: Any, shape: tuple[int, ...], candidates: list[tuple[str, str]],
                  cache_path: Path | None = None) -> AutoChoice | None:
    """What an earlier probe of ``candidates`` at ``shape`` for a network of ``config`` found (the fastest per
    call), or None where none is cached. Times nothing: for ``pspnet info``."""
    names = {f"{p}/{b}" for p, b in candidates}
    entry = _cached_entry(cache_path or auto_cache_path(), _cache_key(config, shape, candidates), names)
    if entry is None:
        return None
    times = {k: float(v) for k, v in entry["times_ms"].items()}
    best = min(times, key=times.get)
    return AutoChoice(*best.split("/"), reason=f"fastest per call in a probe at {'x'.join(map(str, shape))} "
                                               f"on {entry.get('when', '?')}", times_ms=times,
                      setup_ms={k: float(v) for k, v in entry["setup_ms"].items()}, cached=True)


def _write_cache(path: Path, key: str, entry: dict[str, Any]) -> None:
    try:
        write_json_cache(path, key, entry)
    except OSError as e:  # a read-only home must not stop inference: the probe just runs again next time
        log.warning("could not cache the auto-mode probe in %s: %s", path, e)


def _probe(build: Callable[[str, str, list[torch.Tensor]], Any], candidates: list[tuple[str, str]],
           shape: tuple[int, ...]) -> tuple[dict[str, float], dict[str, float], dict[str, str]]:
    """(median milliseconds per call, milliseconds of setup: building and the first call, why each candidate
    that failed to build or run was dropped) of each candidate on a random input of ``shape``; calls
    alternate between candidates. A candidate that raises is dropped with its reason, never the run."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g)
    runners, setup, failed = {}, {}, {}
    with torch.no_grad():
        for p, b in candidates:
            t = time.perf_counter()
            try:
                run = build(p, b, [x])
                run(x)
            except Exception as e:  # noqa: BLE001 - any failure of a candidate drops it, not the run
                failed[f"{p}/{b}"] = one_line(e)
                log.warning("auto: %s/%s dropped: %s", p, b, failed[f"{p}/{b}"])
                continue
            runners[f"{p}/{b}"] = run
            setup[f"{p}/{b}"] = (time.perf_counter() - t) * 1000
    times: dict[str, list[float]] = {k: [] for k in runners}
    with torch.no_grad():
        for _ in range(PROBE_WARMUP - 1):  # graph building, quantisation, oneDNN primitive creation, first touch
            for run in runners.values():
                run(x)
        for _ in range(PROBE_ROUNDS):
            for k, run in runners.items():
                t = time.perf_counter()
                run(x)
                times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) * 1000 for k, v in times.items()}, setup, failed


def one_line(e: BaseException) -> str:
    """``Type: first line of the message`` (at most 200 characters of it): an error as a one-line reason."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__


def choose_auto(net: torch.nn.Module, shape: tuple[int, ...], build: Callable[[str, str, list[torch.Tensor]], Any],
                *, int8_agreement: Int8Agreement = None, device: torch.device | str = "cpu",
                cache_path: Path | None = None, calls: int | None = None) -> AutoChoice:
    """The mode ``auto`` runs for ``net`` on inputs of ``shape`` (module docstring).

    ``calls``: how many calls the job will make, when known (``pspnet predict`` on N images): the
    choice then minimises setup + calls x time per call, so one image is not quantised for.

    ``build(precision, backend, calibration)`` makes a runner (``prepare_for_inference``'s job); it is
    called only when a probe is needed.
    """
    device = torch.device(device)
    first = torch_candidate(device)
    backends, why_not = int8_candidates(device, int8_agreement)
    engines = fp32_engines(device)
    if not backends and not engines:
        return _torch_mode_without_int8(device, why_not)
    if calls is not None and calls <= FEW_CALLS:
        return AutoChoice(*first, reason=_few_calls(calls))
    memory = ""
    need, free = calibration_bytes(net, shape), available_memory()
    heavy = [b for b in ("onnxruntime", "openvino") if b in backends]  # calibrated by ONNX Runtime's quantiser
    if heavy and free is not None and need > free / 2:
        backends = [b for b in backends if b not in heavy]
        memory = (f"int8 on {' and '.join(heavy)} not considered at {'x'.join(map(str, shape))}: calibrating "
                  f"it takes about {need / 1e9:.1f} GB (the fixed-shape export and ONNX Runtime's calibration "
                  f"pass), more than half the free memory ({free / 1e9:.1f} GB)")
        if not backends and not engines:
            return AutoChoice(*first, reason=memory)
    modes = [first] + [("fp32", b) for b in engines] + [("int8", b) for b in backends]
    path = cache_path or auto_cache_path()
    key = _cache_key(net, shape, modes)
    names = {f"{p}/{b}" for p, b in modes}
    entry = _cached_entry(path, key, names)
    cached = entry is not None
    if cached:
        times = {k: float(v) for k, v in entry["times_ms"].items()}
        setup = {k: float(v) for k, v in entry["setup_ms"].items()}
    else:
        log.info("auto: timing %s on %s once for this machine (cached in %s)",
                 " and ".join(sorted(names)), "x".join(map(str, shape)), path)
        times, setup, failed = _probe(build, modes, shape)
        if failed:  # not cached: a failure may be passing (memory), and the reason must be seen again
            dropped = "; ".join(f"{k} dropped ({why})" for k, why in failed.items())
            if not times:
                return AutoChoice("fp32", "torch", reason=f"every candidate failed its probe: {dropped}")
            backends = [b for b in backends if f"int8/{b}" not in failed]
            memory = "; ".join(x for x in (memory, dropped) if x)
        else:
            _write_cache(path, key, {"times_ms": times, "setup_ms": setup,
                                     "when": time.strftime("%Y-%m-%d %H:%M:%S")})
    if calls is None:
        best = min(times, key=times.get)
        how = f"fastest per call in a probe at {'x'.join(map(str, shape))}"
    else:
        best = min(times, key=lambda k: setup[k] + calls * times[k])
        how = f"fastest for {calls} call(s) with setup, in a probe at {'x'.join(map(str, shape))}"
    precision, backend = best.split("/")
    recorded = int8_agreements(int8_agreement)
    notes = [f"int8 on {b} keeps {recorded[b] * 100:.2f}% of the fp32 labels (recorded in the weights)"
             for b in backends]
    if engines:
        notes.append(f"fp32 on {' and '.join(engines)}: the same function on another engine")
    if not backends:
        notes.append(f"int8 not considered: {_why_not(why_not)}")
    agreement = "; ".join(notes + ([memory] if memory else []))
    return AutoChoice(precision, backend, reason=f"{how}; {agreement}", times_ms=times, setup_ms=setup, cached=cached)
