"""The confusion-matrix update behind every evaluation, on one full-size label map."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from .timing import time_calls


def bench_confusion(shape: tuple[int, int] = (1024, 2048), num_classes: int = 19, reps: int = 20,
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    """``ConfusionMatrix.update`` on one label map of ``shape`` (int64 prediction and target with ~5%
    ignore pixels, as from ``logits.argmax(1)`` and a dataset label)."""
    from ..metrics import ConfusionMatrix
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
