"""What this machine can run: for each precision and backend, whether it runs, whether natively, and why
not. The one place every other part of pspnet asks (``auto``, an explicit ``--precision`` /
``--backend``, training's autocast, ``bench``, ``demo``, ``pspnet info``).

The answers come from the runtimes themselves, never from ``/proc/cpuinfo``'s flag list: the CPU's
instruction sets as PyTorch's cpuinfo reads them from CPUID (``torch.cpu._is_avx512_bf16_supported()``
and friends, ``torch.backends.cpu.get_cpu_capability()``), PyTorch's own check for oneDNN's bf16
kernels (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``), what OpenVINO's CPU device reports
(``OPTIMIZATION_CAPABILITIES``), which libraries are installed, and one tiny guarded trial where nothing
reports: a bf16 oneDNN convolution weight reorder, the call that fails on a CPU with AVX2 only
(``mkldnn_reorder_conv2d_weight: bf16 path needs the cpu support avx_ne_convert or avx512bw, ...``), and a
tiny OpenVINO compile per precision. An ``ONEDNN_MAX_CPU_ISA`` cap is honoured as the runtimes honour it:
below AVX512_CORE_VNNI oneDNN (torch's and OpenVINO's) uses no int8 dot products, below AVX512_CORE_BF16
no bf16 units, so the answers say so. The flag file can disagree with the
runtime (an emulator, a hypervisor that hides AMX, a container): the runtime wins. No ``/proc/cpuinfo``
at all (ARM64 Linux, macOS) changes nothing here.

The trial's and OpenVINO's answers are cached per machine in ``$PSPNET_HOME/capabilities.json``, keyed
by what they depend on: the CPUID answers, the CPU model, torch's and the backends' versions, oneDNN's
cap and pspnet's version; everything else costs about a millisecond and is read on every call.

``PSPNET_SIMULATE_CPU=<profile>`` (one of :data:`PROFILES`: ``avx2``, ``avx512``, ``zen4``,
``xeon-amx``, ``arm64``) answers as that CPU would, *within* what this machine's runtime can do: a
simulation takes capabilities away, never adds one the runtime would then fail to run. So
``PSPNET_SIMULATE_CPU=avx2 pspnet predict ...`` takes an AVX2-only machine's decisions here. The
tests simulate a CPU through this module too.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError
from .files import pspnet_home, read_json_cache, write_json_cache
from .version import __version__

__all__ = ["SIMULATE_ENV", "PRECISIONS", "BACKENDS", "Facts", "Capability", "Capabilities", "PROFILES",
           "cpu_model", "real_facts", "real_capabilities", "capabilities", "check", "require"]

SIMULATE_ENV = "PSPNET_SIMULATE_CPU"
PRECISIONS = ("fp32", "bf16", "int8")
BACKENDS = ("torch", "onnxruntime", "openvino")
_CACHE_FILE = "capabilities.json"


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """(model name, flags of the first processor) from /proc/cpuinfo; ("", no flags) where unreadable.
    Reported, never decided on."""
    model, flags = "", frozenset()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
    return model, flags


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else ``platform.processor()``): for reports only."""
    return _cpuinfo()[0] or platform.processor() or platform.machine() or "unknown"


@dataclass(frozen=True)
class Facts:
    """What the runtimes report about this machine (or a simulated one)."""

    machine: str  # platform.machine(): x86_64, aarch64, arm64
    isa: str  # torch.backends.cpu.get_cpu_capability(): AVX512, AVX2, DEFAULT, ...
    avx2: bool
    avx512: bool
    avx512_bf16: bool
    amx: bool  # AMX tiles: bf16 and int8 matrix units
    vnni: bool  # int8 dot-product instructions (AVX512-VNNI / AVX-VNNI)
    mkldnn: bool  # PyTorch's oneDNN and the fused ops our fast path uses
    mkldnn_bf16: bool  # torch.ops.mkldnn._is_mkldnn_bf16_supported()
    bf16_trial: str | None  # None: a bf16 oneDNN weight reorder ran; else its error
    compiler: bool  # a C++ compiler for inductor (torch's int8 path compiles)
    torchao: str | None
    onnxruntime: str | None
    openvino: str | None
    openvino_caps: tuple[str, ...] = ()  # OpenVINO CPU's OPTIMIZATION_CAPABILITIES (FP32, BF16, INT8, ...)
    openvino_error: str | None = None
    simulated: str | None = None  # the profile name, where PSPNET_SIMULATE_CPU is set

    @property
    def x86(self) -> bool:
        return self.machine.lower() in ("x86_64", "amd64", "i686", "x86")

    def within(self, real: Facts) -> Facts:
        """This (simulated) machine's answers, limited to what ``real``'s runtime can run."""
        return dataclasses.replace(
            self, mkldnn=self.mkldnn and real.mkldnn, mkldnn_bf16=self.mkldnn_bf16 and real.mkldnn_bf16,
            bf16_trial=self.bf16_trial or real.bf16_trial, compiler=self.compiler and real.compiler,
            torchao=real.torchao, onnxruntime=real.onnxruntime, openvino=real.openvino,
            openvino_caps=tuple(c for c in self.openvino_caps if c in real.openvino_caps),
            openvino_error=real.openvino_error)


@dataclass(frozen=True)
class Capability:
    """One answer: ``runs`` (it executes here), ``native`` (at the hardware's speed, not emulated) and
    ``why`` (why it does not run, or why it is slow; None when it runs natively)."""

    precision: str
    backend: str
    runs: bool
    native: bool
    why: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"runs": self.runs, "native": self.native}
        if self.why:
            out["why"] = self.why
        return out


_BF16_REFUSED = ("PyTorch's oneDNN has no bf16 convolution on this CPU (CPU capability {isa}; it needs AVX-512 "
                 "BW/VL/DQ or AVX-NE-CONVERT)")
# the CPUs this project's machines have, and two more users have, as the runtimes report them
PROFILES: dict[str, dict[str, Any]] = {
    "avx2": dict(machine="x86_64", isa="AVX2", avx2=True, avx512=False, avx512_bf16=False, amx=False, vnni=False,
                 mkldnn=True, mkldnn_bf16=False, bf16_trial="mkldnn_reorder_conv2d_weight: bf16 path needs the cpu "
                 "support avx_ne_convert or avx512bw, avx512vl and avx512dq", openvino_caps=("FP32", "INT8")),
    "avx512": dict(machine="x86_64", isa="AVX512", avx2=True, avx512=True, avx512_bf16=False, amx=False, vnni=False,
                   mkldnn=True, mkldnn_bf16=True, bf16_trial=None, openvino_caps=("FP32", "INT8")),
    "zen4": dict(machine="x86_64", isa="AVX512", avx2=True, avx512=True, avx512_bf16=True, amx=False, vnni=True,
                 mkldnn=True, mkldnn_bf16=True, bf16_trial=None, openvino_caps=("BF16", "FP32", "INT8")),
    "xeon-amx": dict(machine="x86_64", isa="AVX512", avx2=True, avx512=True, avx512_bf16=True, amx=True, vnni=True,
                     mkldnn=True, mkldnn_bf16=True, bf16_trial=None, openvino_caps=("BF16", "FP32", "INT8")),
    "arm64": dict(machine="aarch64", isa="DEFAULT", avx2=False, avx512=False, avx512_bf16=False, amx=False,
                  vnni=False, mkldnn=False, mkldnn_bf16=False, bf16_trial="not an x86 CPU with oneDNN's bf16 kernels",
                  openvino_caps=("FP32", "INT8")),
}
"""Simulated CPUs (``PSPNET_SIMULATE_CPU``): an AMD EPYC with AVX2 only, an AVX-512 Xeon without bf16 or
VNNI (Skylake), an AMD EPYC Zen 4, an Intel Xeon with AMX, and an ARM64 machine."""


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_bit(name: str) -> bool:
    fn = getattr(torch.cpu, name, None)
    try:
        return bool(fn()) if fn is not None else False
    except Exception:  # noqa: BLE001 - an old torch or an unusual platform: the instruction set is not known
        return False


def _quick_facts() -> dict[str, Any]:
    """The answers that cost about a millisecond in all: read on every call, and the cache key of the rest."""
    mkldnn = (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
              and hasattr(torch._C._nn, "mkldnn_reorder_conv2d_weight"))
    try:
        mkldnn_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - a torch without the check
        mkldnn_bf16 = False
    return dict(machine=platform.machine(), isa=torch.backends.cpu.get_cpu_capability(),
                avx2=_cpu_bit("_is_avx2_supported"), avx512=_cpu_bit("_is_avx512_supported"),
                avx512_bf16=_cpu_bit("_is_avx512_bf16_supported"), amx=_cpu_bit("_is_amx_tile_supported"),
                vnni=_cpu_bit("_is_vnni_supported"), mkldnn=mkldnn, mkldnn_bf16=mkldnn_bf16,
                compiler=any(shutil.which(c) for c in ("g++", "c++", "clang++")),
                torchao=_dist_version("torchao"), onnxruntime=_dist_version("onnxruntime"),
                openvino=_dist_version("openvino"))


# oneDNN's instruction-set caps (ONEDNN_MAX_CPU_ISA), lowest first, and what each leaves to oneDNN's kernels (torch's
# and OpenVINO's): a cap below a unit means the runtime does not use it, whatever CPUID says
_ONEDNN_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
                "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
                "AVX10_2_512", "AVX10_2_512_AMX_2", "DEFAULT", "ALL")


def _under_onednn_cap(quick: dict[str, Any]) -> dict[str, Any]:
    """``quick`` with the units an ``ONEDNN_MAX_CPU_ISA`` cap keeps oneDNN from using switched off."""
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or "").upper()
    if cap not in _ONEDNN_ISAS or cap in ("DEFAULT", "ALL"):
        return quick
    level = _ONEDNN_ISAS.index(cap)

    def allows(isa: str) -> bool:
        return level >= _ONEDNN_ISAS.index(isa)
    out = dict(quick)
    out["avx512"] = quick["avx512"] and allows("AVX512_CORE")
    out["vnni"] = quick["vnni"] and (allows("AVX512_CORE_VNNI") or (allows("AVX2_VNNI") and not allows("AVX512_CORE")))
    out["avx512_bf16"] = quick["avx512_bf16"] and allows("AVX512_CORE_BF16")
    out["amx"] = quick["amx"] and allows("AVX512_CORE_AMX")
    return out


def _bf16_trial() -> str | None:
    """Run the call our bf16 fast path makes first (a bf16 oneDNN convolution weight reorder) on a tiny
    weight: None where it runs, else the runtime's own message."""
    try:
        x, w = torch.randn(1, 3, 8, 8).bfloat16(), torch.randn(8, 3, 3, 3).bfloat16()
        packed = torch._C._nn.mkldnn_reorder_conv2d_weight(w.to_mkldnn(), [1, 1], [1, 1], [1, 1], 1, [1, 3, 8, 8])
        torch.ops.mkldnn._convolution_pointwise(x, packed, None, [1, 1], [1, 1], [1, 1], 1, "none", [], "")
        return None
    except Exception as e:  # noqa: BLE001 - any refusal is the answer
        text = str(e).strip()
        return text.splitlines()[0][:300] if text else type(e).__name__


def _openvino_caps() -> tuple[tuple[str, ...], str | None]:
    """What OpenVINO's CPU device reports it runs (``OPTIMIZATION_CAPABILITIES``), less each of FP32 and BF16
    that fails a trial compile of a tiny convolution + max-pool graph (under an ``ONEDNN_MAX_CPU_ISA`` cap
    OpenVINO still reports BF16 but refuses to compile: "Supported primitive descriptors list is empty")."""
    try:
        import openvino
        core = openvino.Core()
        caps = [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
    except Exception as e:  # noqa: BLE001 - not installed, or no CPU device: OpenVINO does not run here
        return (), f"{type(e).__name__}: {e}".splitlines()[0]
    errors = []
    for name, hint in (("FP32", "f32"), ("BF16", "bf16")):
        if name not in caps:
            continue
        failed = _openvino_trial(core, hint)
        if failed:
            caps.remove(name)
            errors.append(f"{name}: {failed}")
    if "FP32" not in caps and "INT8" in caps:  # int8 graphs keep f32 parts: nothing compiles without f32
        caps.remove("INT8")
    return tuple(caps), "; ".join(errors) or None


def _openvino_trial(core: Any, hint: str) -> str | None:
    """Compile a 1x3x8x8 Conv -> Relu -> MaxPool ONNX graph at ``hint``: None where it compiles, else the
    first line of OpenVINO's refusal."""
    import tempfile

    try:
        import numpy as np
        import onnx
        from onnx import TensorProto, helper, numpy_helper
        weight = numpy_helper.from_array(np.full((4, 3, 3, 3), 0.1, np.float32), "w")
        graph = helper.make_graph(
            [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
            "trial", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])], [weight])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        with tempfile.TemporaryDirectory(prefix="pspnet-ov-trial-") as tmp:
            path = f"{tmp}/trial.onnx"
            onnx.save(model, path)
            core.compile_model(core.read_model(path), "CPU", {"INFERENCE_PRECISION_HINT": hint})
        return None
    except Exception as e:  # noqa: BLE001 - any refusal is the answer
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        said = [line for line in lines if not line.startswith("Exception from ")]  # OpenVINO's source locations
        return ((said or lines or [type(e).__name__])[-1])[:300]


def _key(quick: dict[str, Any]) -> str:
    ident = {**quick, "cpu": cpu_model(), "torch": torch.__version__, "pspnet": __version__,
             "onednn_isa": os.environ.get("ONEDNN_MAX_CPU_ISA")}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]


@functools.cache
def _measured(key: str, mkldnn: bool, openvino: str | None) -> tuple[str | None, tuple[str, ...], str | None]:
    """(bf16 trial, OpenVINO's capabilities, OpenVINO's error), from the cache file or measured and cached."""
    path = pspnet_home() / _CACHE_FILE
    entry = read_json_cache(path).get(key)
    if isinstance(entry, dict) and set(entry) == {"bf16_trial", "openvino_caps", "openvino_error"}:
        return entry["bf16_trial"], tuple(entry["openvino_caps"]), entry["openvino_error"]
    trial = _bf16_trial() if mkldnn else "PyTorch has no oneDNN (mkldnn) on this machine"
    caps, error = _openvino_caps() if openvino else ((), "OpenVINO is not installed")
    try:
        write_json_cache(path, key, {"bf16_trial": trial, "openvino_caps": list(caps), "openvino_error": error})
    except OSError:  # a read-only home: asked again next process
        pass
    return trial, caps, error


def real_facts() -> Facts:
    """This machine's answers (no simulation)."""
    quick = _under_onednn_cap(_quick_facts())
    trial, caps, error = _measured(_key(quick), quick["mkldnn"], quick["openvino"])
    return Facts(**quick, bf16_trial=trial, openvino_caps=caps, openvino_error=error)


def _simulated(name: str, real: Facts) -> Facts:
    if name not in PROFILES:
        raise ConfigError(f"{SIMULATE_ENV}={name!r} is not a CPU pspnet can simulate; choose from "
                          f"{', '.join(PROFILES)}, or unset it")
    profile = Facts(**PROFILES[name], compiler=True, torchao=None, onnxruntime=None, openvino=None,
                    simulated=name)
    return profile.within(real)


class Capabilities:
    """The answers for every precision and backend on one machine (real or simulated)."""

    def __init__(self, facts: Facts) -> None:
        self.facts = facts

    def check(self, precision: str, backend: str = "torch", device: torch.device | str = "cpu") -> Capability:
        """Whether ``precision`` on ``backend`` runs on ``device`` here, natively, and why not."""
        device = torch.device(device)
        if device.type == "cuda":
            return self._cuda(precision, backend)
        return getattr(self, f"_{backend}")(precision)

    def table(self) -> dict[str, dict[str, Capability]]:
        """``{precision: {backend: Capability}}`` for every pair pspnet has."""
        return {p: {b: self.check(p, b) for b in BACKENDS} for p in PRECISIONS}

    def best(self, precision: str) -> Capability:
        """The first backend that runs ``precision`` natively, else the first that runs it, else torch's
        refusal: the answer ``pspnet info`` gives per precision."""
        found = [self.check(precision, b) for b in BACKENDS]
        return next((c for c in found if c.native), next((c for c in found if c.runs), found[0]))

    # ---------------------------------------------------------------- one method per backend
    def _int8_speed(self) -> tuple[bool, str | None]:
        f = self.facts
        if f.amx or f.vnni:
            return True, None
        return False, ("no int8 dot-product instructions (VNNI or AMX-INT8): int8 runs on AVX2's multiply-adds, "
                       "and must quantise its weights to 7 bits so they cannot saturate")

    def _torch(self, precision: str) -> Capability:
        f = self.facts
        if precision == "fp32":
            return Capability(precision, "torch", True, True)
        if precision == "bf16":
            if not f.mkldnn or not f.mkldnn_bf16:
                return Capability(precision, "torch", False, False, _BF16_REFUSED.format(isa=f.isa))
            if f.bf16_trial:
                return Capability(precision, "torch", False, False, f"a bf16 oneDNN convolution failed here: "
                                                                    f"{f.bf16_trial}")
            if f.avx512_bf16 or f.amx:
                return Capability(precision, "torch", True, True)
            return Capability(precision, "torch", True, False, "emulated: no avx512_bf16 or AMX-BF16, so bf16 runs "
                                                              "on fp32 units and is slower than fp32")
        if not f.x86:
            return Capability(precision, "torch", False, False, f"torch's int8 path (x86 inductor) needs an x86 CPU, "
                                                                f"this is {f.machine}")
        if not f.torchao:
            return Capability(precision, "torch", False, False, "torchao is not installed (pip install torchao)")
        if not f.compiler:
            return Capability(precision, "torch", False, False, "no C++ compiler for inductor (install g++)")
        native, why = self._int8_speed()
        return Capability(precision, "torch", True, native, why)

    def _onnxruntime(self, precision: str) -> Capability:
        f = self.facts
        if not f.onnxruntime:
            return Capability(precision, "onnxruntime", False, False, "onnxruntime is not installed "
                                                                      "(pip install onnxruntime)")
        if precision == "bf16":
            return Capability(precision, "onnxruntime", False, False, "pspnet's ONNX Runtime backend runs fp32 or "
                                                                      "int8 (bf16 runs on torch or openvino)")
        if precision == "fp32":
            return Capability(precision, "onnxruntime", True, True)
        native, why = self._int8_speed() if f.x86 else (True, None)  # ARM: ONNX Runtime's dot-product kernels
        return Capability(precision, "onnxruntime", True, native, why)

    def _openvino(self, precision: str) -> Capability:
        f = self.facts
        if not f.openvino:
            return Capability(precision, "openvino", False, False, 'OpenVINO is not installed '
                                                                   '(pip install "pspnet[openvino]")')
        if not f.openvino_caps:
            return Capability(precision, "openvino", False, False, f"OpenVINO has no CPU device here "
                                                                   f"({f.openvino_error or 'no capabilities'})")
        name = {"fp32": "FP32", "bf16": "BF16", "int8": "INT8"}[precision]
        if name not in f.openvino_caps:
            return Capability(precision, "openvino", False, False, f"OpenVINO's CPU device reports no {name} "
                                                                   f"({', '.join(f.openvino_caps)})")
        if precision == "int8":
            native, why = self._int8_speed()
            return Capability(precision, "openvino", True, native, why)
        return Capability(precision, "openvino", True, True)

    def _cuda(self, precision: str, backend: str) -> Capability:
        if backend != "torch":
            return Capability(precision, backend, False, False, f"the {backend} backend runs on the CPU only")
        if not torch.cuda.is_available():
            return Capability(precision, backend, False, False, "no CUDA device")
        if precision == "int8":
            return Capability(precision, backend, False, False, "int8 runs on the CPU only")
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            return Capability(precision, backend, False, False, "this GPU has no bf16")
        return Capability(precision, backend, True, True)


def real_capabilities() -> Capabilities:
    """This machine's answers, whatever ``PSPNET_SIMULATE_CPU`` says."""
    return Capabilities(real_facts())


def capabilities() -> Capabilities:
    """This machine's answers, or the simulated CPU's within them (``PSPNET_SIMULATE_CPU``). Read on every
    call (the environment may change); the costly parts are cached."""
    facts = real_facts()
    name = os.environ.get(SIMULATE_ENV)
    return Capabilities(_simulated(name, facts) if name else facts)


def check(precision: str, backend: str = "torch", device: torch.device | str = "cpu") -> Capability:
    """:meth:`Capabilities.check` on this machine."""
    return capabilities().check(precision, backend, device)


def require(precision: str, backend: str = "torch", device: torch.device | str = "cpu") -> Capability:
    """:func:`check`, raising a :class:`~pspnet.errors.ConfigError` that names the precision, the reason and
    what to use instead where it does not run."""
    cap = check(precision, backend, device)
    if not cap.runs:
        instead = "precision auto (the fastest mode that runs here) or fp32"
        raise ConfigError(f"precision {precision} on backend {backend} does not run on this "
                          f"{torch.device(device).type}: {cap.why}; use {instead}")
    return cap
