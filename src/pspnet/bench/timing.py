"""Timing and the benchmarks' common inputs: wall time of repeated calls, ``HxW`` sizes, a PSPNet to time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from ..models import PSPNet, PSPNetConfig


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
