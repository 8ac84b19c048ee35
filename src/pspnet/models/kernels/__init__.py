"""Small C++ kernels for CPU training, built on first use and loaded with ctypes.

Each ``<name>.cpp`` here uses no torch headers, so the system's ``g++`` (or ``$CXX``) builds it in
seconds, with ``-march=native`` for the CPU it runs on and OpenMP linked to ``libgomp.so.1``, which
resolves to the runtime torch has already loaded (one thread pool). The library is cached in
:func:`pspnet.files.pspnet_home` ``/kernels``, named by a hash of its source and the headers here
(``bf16.h``), the flags, the compiler and this CPU's model and flags, and written atomically. Where it
cannot be built, the callers train with their eager PyTorch code instead, as they do with
``PSPNET_CPU_KERNELS=0``.

``PSPNET_KERNEL_CXXFLAGS`` adds compiler flags after ours (a later ``-march`` wins), for example to build
for another CPU's instruction set: ``bench/emulate_zen4.sh`` builds them as a Zen 4 (no AMX, no
avx512_fp16) would. It is a variable of its own, not ``CXXFLAGS``, because environments such as conda set
``CXXFLAGS`` to a generic ``-march`` that would quietly slow the kernels down.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
from pathlib import Path

import torch

from ...files import atomic_write, pspnet_home

__all__ = ["ENV", "FLAGS_ENV", "DTYPES", "enabled", "load", "library", "ptr", "float_ptr"]

log = logging.getLogger(__name__)

ENV = "PSPNET_CPU_KERNELS"
FLAGS_ENV = "PSPNET_KERNEL_CXXFLAGS"
DTYPES = {torch.float32: 0, torch.bfloat16: 1}
"""The ``dtype`` argument of the kernels that take float32 or bfloat16 tensors (``bf16.h``)."""
# -fno-trapping-math only lets GCC assume no floating-point exception is observed (no value changes):
# without it GCC does not vectorise floorf, and upsampled_ce.cpp's exp loops ran scalar, 2.6x slower
# (bitwise the same results; docs/benchmarks.md)
_FLAGS = ["-O3", "-march=native", "-fno-trapping-math", "-fopenmp", "-shared", "-fPIC", "-std=c++17"]
# GCC tunes a Sapphire Rapids Xeon for 256-bit vectors; with 512 the kernels ran 4-6% faster there
# (bitwise the same results; docs/benchmarks.md). x86 only: other compilers' targets reject the flag.
if platform.machine().lower() in ("x86_64", "amd64"):
    _FLAGS.append("-mprefer-vector-width=512")


def _flags() -> list[str]:
    """Our flags, then those ``PSPNET_KERNEL_CXXFLAGS`` adds."""
    return [*_FLAGS, *os.environ.get(FLAGS_ENV, "").split()]


def _machine() -> bytes:
    """This CPU's model and instruction-set flags (/proc/cpuinfo), for the name of a -march=native build."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{platform.machine()} {platform.processor()}".encode()
    return "\n".join(sorted({line for line in text.splitlines() if line.startswith(("model name", "flags"))})).encode()


def enabled() -> bool:
    """False when ``PSPNET_CPU_KERNELS=0`` asks for the eager code (read on every call)."""
    return os.environ.get(ENV, "1") != "0"


@functools.cache
def load(name: str) -> ctypes.CDLL | None:
    """The compiled ``<name>.cpp``, built on first use; None (with the reason logged) where it cannot be."""
    source = Path(__file__).with_name(f"{name}.cpp")
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        log.info("%s kernel off: no C++ compiler (g++ or $CXX) found; the eager code trains", name)
        return None
    headers = [h.read_bytes() for h in sorted(source.parent.glob("*.h"))]  # what the sources #include
    flags = _flags()
    key = hashlib.sha256(b"\0".join([source.read_bytes(), *headers, " ".join(flags).encode(), compiler.encode(),
                                      _machine()]))
    target = pspnet_home() / "kernels" / f"{name}-{key.hexdigest()[:16]}.so"

    def compile_to(tmp: Path) -> None:
        proc = subprocess.run([compiler, *flags, str(source), "-o", str(tmp)], capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"{compiler} failed on {source}:\n{proc.stderr[-2000:]}")

    try:
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(target, compile_to)
        return ctypes.CDLL(str(target))
    except (OSError, RuntimeError) as err:
        log.warning("%s kernel off, the eager code trains: %s", name, err)
        return None


def library(name: str, signatures: dict[str, list]) -> ctypes.CDLL | None:
    """:func:`load` with each named function's ctypes argument types set (None where it cannot be built)."""
    lib = load(name)
    if lib is not None:
        for function, argtypes in signatures.items():
            getattr(lib, function).argtypes = argtypes
    return lib


def ptr(t: torch.Tensor | None) -> ctypes.c_void_p | None:
    """A tensor's data pointer for a ``void*`` argument (None: a null pointer)."""
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def float_ptr(t: torch.Tensor | None):
    """A float32 tensor's data pointer for a ``float*`` argument (None: a null pointer)."""
    return None if t is None else ctypes.cast(t.data_ptr(), ctypes.POINTER(ctypes.c_float))
