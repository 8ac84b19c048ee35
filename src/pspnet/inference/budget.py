"""A memory budget for inference: estimate, before a model is built or an image is run, the memory it
needs, and refuse (:class:`~pspnet.errors.MemoryBudgetError`) or fall back to sliding windows when it is
over the budget (issue 41: an 8000 x 8000 PNG of 62 KB peaked at 12.7 GB whole; a 492-byte weight file
asked for 40 GB).

The estimate, per image and scale, in bytes:

- the model: its parameters in float32, twice (the loaded model and the prepared, folded copy);
- the network's activations: measured once per model config by running the model on the ``meta``
  device (shapes only, no memory) at a reference size with a hook on every leaf module; the peak of
  one module's input + output per input pixel, scaled by the pixels
  of the largest scaled image (whole mode) or of four windows (sliding mode, which runs them four at
  a time); halved in bf16;
- the output-sized buffers (:doc:`docs/reliability.md`, "Stated bound"): the decoded image and its
  copies (3 x 3 bytes), the normalised image (3 x 4 bytes), the summed probabilities and their
  average (2 x C x 4), the window count (4), the int64 argmax (8) per pixel of the original or the
  largest scaled image.

It errs high (every buffer alive at once); the default budget is three quarters of the memory the
system reports available (``MemAvailable``), ``--max-memory`` sets another.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import MemoryBudgetError

__all__ = ["available_memory", "default_budget", "activation_bytes_per_pixel", "model_bytes", "image_bytes",
           "plan_image", "check_model", "ImagePlan", "SLIDING_CROP"]

SLIDING_CROP = 512
"""Window side of the sliding-window fallback for an image too large to run whole."""
_REFERENCE = 256  # side of the meta-device probe image; activations grow linearly with the pixels


def available_memory() -> int:
    """Bytes the system reports available (``MemAvailable``), else the physical memory, else 8 GiB."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def default_budget() -> int:
    """Three quarters of the available memory: room for the process itself and for the rest of the system."""
    return available_memory() * 3 // 4


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


@functools.lru_cache(maxsize=16)
def _activation_per_pixel(config_items: tuple) -> float:
    import torch

    from ..models.pspnet import PSPNetConfig
    from ..models.weights import model_skeleton
    model = model_skeleton(PSPNetConfig.from_dict(dict(config_items))).eval()
    peak = 0

    def nbytes(t) -> int:
        return t.numel() * 4 if isinstance(t, torch.Tensor) else 0

    def hook(module, inputs, output) -> None:
        nonlocal peak
        x = inputs[0] if inputs else None
        outs = output if isinstance(output, (tuple, list)) else (output,)
        peak = max(peak, nbytes(x) + sum(nbytes(o) for o in outs))  # a module's input and output alive at once
    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, _REFERENCE, _REFERENCE, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return peak / (_REFERENCE * _REFERENCE)


def _config_key(config) -> tuple:
    return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(config.to_dict().items()))


def activation_bytes_per_pixel(config) -> float:
    """Peak float32 activation bytes per input pixel of one forward pass of the model ``config`` describes."""
    return _activation_per_pixel(_config_key(config))


def model_bytes(config) -> int:
    """The model's float32 parameters and buffers, counted twice (loaded + prepared copy)."""
    from ..models.weights import parameter_bytes
    return 2 * parameter_bytes(config)


def image_bytes(config, height: int, width: int, *, base_size: int | None, scales: Sequence[float],
                mode: str, crop_size: Sequence[int] | None, precision: str) -> int:
    """The estimate of the module docstring for one ``height x width`` image (the model excluded)."""
    from .testtime import base_resize_shape
    per_pixel = activation_bytes_per_pixel(config) * (0.5 if precision in ("bf16", "auto", "int8") else 1.0)
    largest = max(math.prod(base_resize_shape(height, width, base_size, s)) for s in scales)
    if mode == "sliding" and crop_size:
        run_pixels = min(largest, 4 * crop_size[0] * crop_size[1])
    else:
        run_pixels = largest
    buffers = (33 + 8 * config.num_classes) * max(height * width, largest)
    return int(per_pixel * run_pixels + buffers)


def check_model(config, budget: int | None, source: str) -> None:
    """:class:`MemoryBudgetError` when the model alone does not fit ``budget`` (default: :func:`default_budget`)."""
    budget = budget or default_budget()
    need = model_bytes(config)
    if need > budget:
        raise MemoryBudgetError(f"{source}: the model (ResNet-{config.depth}, {config.num_classes} classes, head "
                                f"{config.head_channels}) needs about {gib(need)}, over the memory budget of "
                                f"{gib(budget)}; use a smaller model, or raise the budget with --max-memory")


@dataclass
class ImagePlan:
    mode: str
    crop_size: tuple[int, int] | None
    need: int
    note: str | None = None


def plan_image(config, height: int, width: int, budget: int | None, *, base_size: int | None,
               scales: Sequence[float], mode: str, crop_size: Sequence[int] | None, precision: str,
               name: str = "image") -> ImagePlan:
    """How to run one image within ``budget``: as asked; else, if whole, in sliding windows of
    :data:`SLIDING_CROP` (with a note saying so); else :class:`MemoryBudgetError` naming the need."""
    budget = budget or default_budget()
    fixed = model_bytes(config)
    kw = dict(base_size=base_size, scales=scales, precision=precision)
    need = fixed + image_bytes(config, height, width, mode=mode, crop_size=crop_size, **kw)
    if need <= budget:
        return ImagePlan(mode, tuple(crop_size) if crop_size else None, need)
    if mode == "whole":
        crop = (SLIDING_CROP, SLIDING_CROP)
        windowed = fixed + image_bytes(config, height, width, mode="sliding", crop_size=crop, **kw)
        if windowed <= budget:
            return ImagePlan("sliding", crop, windowed,
                             f"{name}: {width}x{height} whole would need about {gib(need)}, over the memory budget "
                             f"of {gib(budget)}; predicting it in {SLIDING_CROP}x{SLIDING_CROP} sliding windows "
                             f"(about {gib(windowed)})")
        need = windowed
    raise MemoryBudgetError(f"{name}: {width}x{height} needs about {gib(need)} even in sliding windows, over the "
                            f"memory budget of {gib(budget)}; use --base-size to shrink it, fewer --scales, or "
                            f"raise the budget with --max-memory")
