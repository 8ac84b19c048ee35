"""Checked option types for the ``pspnet`` command line: every value is validated where argparse parses
it, so a bad one is a usage error (exit status 2) naming the value, the allowed range and the fix, and
never reaches a traceback, a 90 GB allocation or a silent exit 0 (issue 41).

Each factory returns a ``type=`` callable for ``add_argument``; it raises
:class:`argparse.ArgumentTypeError`, which argparse reports as ``pspnet CMD: error: argument --X: ...``.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from pathlib import Path

__all__ = ["int_in", "float_in", "base_size", "worker_count", "thread_count", "memory_size", "output_folder",
           "output_file", "MAX_SIDE", "MAX_SCALE"]

MAX_SIDE = 8192
"""The largest --base-size / --crop-size side: a 8192 px long side is 64 M pixels per scale, already
several GB of activations for PSPNet-50; larger images are predicted whole (--base-size 0) or in windows."""
MAX_SCALE = 4.0
"""The largest test scale: the paper's multi-scale test goes to 1.75; 1000 asked for 37 GB."""


def cpu_count() -> int:
    return os.cpu_count() or 1


def _number(text: str, kind, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def int_in(lo: int, hi: int | None = None, *, fix: str = ""):
    """An integer in ``[lo, hi]`` (``hi=None``: no upper bound)."""
    def parse(text: str) -> int:
        value = _number(text, int, "an integer")
        if value < lo or (hi is not None and value > hi):
            allowed = f"{lo} to {hi}" if hi is not None else f"at least {lo}"
            raise argparse.ArgumentTypeError(f"{value} is out of range: allowed {allowed}{'; ' + fix if fix else ''}")
        return value
    parse.__name__ = "integer"
    return parse


def float_in(lo: float, hi: float, *, lo_open: bool = False, fix: str = ""):
    """A finite number in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``)."""
    def parse(text: str) -> float:
        value = _number(text, float, "a number")
        if value < lo or value > hi or (lo_open and value == lo):
            allowed = f"{'more than' if lo_open else 'from'} {lo:g} {'and at most' if lo_open else 'to'} {hi:g}"
            raise argparse.ArgumentTypeError(f"{value:g} is out of range: allowed {allowed}{'; ' + fix if fix else ''}")
        return value
    parse.__name__ = "number"
    return parse


def base_size(text: str) -> int:
    """0 (no resize) or a long side from 16 to :data:`MAX_SIDE` pixels."""
    value = _number(text, int, "an integer")
    if value != 0 and not 16 <= value <= MAX_SIDE:
        raise argparse.ArgumentTypeError(f"{value} is out of range: allowed 0 (no resize) or 16 to {MAX_SIDE} pixels; "
                                         f"for a larger image use --base-size 0 or --sliding")
    return value


def worker_count(text: str) -> int:
    """0 (this process) to four per CPU core."""
    return int_in(0, 4 * cpu_count(), fix=f"this machine has {cpu_count()} CPU core(s)")(text)


def thread_count(text: str) -> int:
    """1 to four per CPU core: more threads than that only contend."""
    return int_in(1, 4 * cpu_count(), fix=f"this machine has {cpu_count()} CPU core(s)")(text)


_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def memory_size(text: str) -> int:
    """Bytes of ``512M``, ``4G``, ``1.5g``, ``2000000000`` (from 64 MiB to 64 TiB)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a memory size; write e.g. 4G, 512M or 1.5G")
    value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if not 2**26 <= value <= 2**46:
        raise argparse.ArgumentTypeError(f"{text} is out of range: allowed 64M to 64T")
    return value


def _writable_folder_above(path: Path) -> Path | None:
    """The nearest existing folder at or above ``path``, if the process may create files in it."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return None
        probe = probe.parent
    return probe if probe.is_dir() and os.access(probe, os.W_OK | os.X_OK) else None


def output_folder(text: str) -> str:
    """A folder to write into: an existing folder we may write in, or a new one we may create."""
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} exists and is not a folder; name a folder (new or existing)")
    if _writable_folder_above(path) is None:
        raise argparse.ArgumentTypeError(f"{text}: cannot write there (no permission, or a read-only file system); "
                                         f"name a folder you can write in")
    return text


def output_file(text: str) -> str:
    """A file to write: not a folder, in a folder we may write in (or create)."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; name a file to write")
    if _writable_folder_above(path.parent) is None:
        raise argparse.ArgumentTypeError(f"{text}: cannot write there (no permission, or a read-only file system); "
                                         f"name a file in a folder you can write in")
    return text
