"""Test-time inference: whole image (optionally resized to a base size), multi-scale and flip.

All functions take uint8 or float 0-255 images ``N x 3 x H x W`` (normalisation happens here)
and return logits (or class probabilities averaged over the test-time variants) at ``H x W``.
Multi-scale testing ("MS" in the paper's ablations, Sec. 5.1) averages the class scores of
several scaled copies of the image; the original release uses scales 0.5 ... 1.75 and adds the
horizontally flipped image. Any image size works (no ``8n + 1`` rule): the model's logits are
bilinearly resized back to each variant's input and then to the image's size.

``model`` may be any callable mapping a normalised float batch to logits: a PSPNet, or what
``pspnet.engine.fast.prepare_for_inference`` returns (which has a ``.device``).
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..data.transforms import normalize
from ..errors import DataError

log = logging.getLogger("pspnet.inference")


def _resize(x: torch.Tensor, size: tuple[int, int], align_corners: bool = True) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size, mode="bilinear", align_corners=align_corners)


def base_resize_shape(h: int, w: int, base_size: int | None, scale: float = 1.0) -> tuple[int, int]:
    """Shape after resizing the long side to ``base_size * scale`` (or scaling the image by ``scale``)."""
    if base_size:
        long = base_size * scale
        f = long / max(h, w)
    else:
        f = scale
    return max(1, round(h * f)), max(1, round(w * f))


def model_device(model) -> torch.device:
    """The device a model (or a prepared inference callable with ``.device``) runs on."""
    dev = getattr(model, "device", None)
    if isinstance(dev, (torch.device, str)):
        return torch.device(dev)
    if isinstance(model, nn.Module):
        for t in model.parameters():
            return t.device
        for t in model.buffers():
            return t.device
    return torch.device("cpu")


def prepare_model(model, precision: str = "fp32", backend: str = "torch"):
    """``(runner, precision used)``: the model in eval mode for ``fp32`` on the torch backend; for
    another precision or backend the callable of ``pspnet.engine.fast.prepare_for_inference`` (fp32
    with a warning if that module is not installed)."""
    if isinstance(model, nn.Module):
        model.eval()
    if precision == "fp32" and backend == "torch":
        return model, "fp32"
    try:
        from .fast import prepare_for_inference
    except ImportError:
        log.warning("precision %r needs pspnet.engine.fast, which is not available; running fp32", precision)
        return model, "fp32"
    runner = prepare_for_inference(model, precision=precision, backend=backend)
    return runner, getattr(runner, "precision", precision)


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, *, base_size: int | None = None,
                   scales: Sequence[float] = (1.0,), flip: bool = False, mode: str = "whole",
                   crop_size: Sequence[int] | None = None, stride_rate: float = 2 / 3,
                   autocast_dtype: torch.dtype | None = None, softmax: bool = True) -> torch.Tensor:
    """Average (softmax) scores over scales x flips at the input's resolution.

    Each scale ``s`` resizes the image to ``s`` times its size, or, with ``base_size``, so that its
    long side is ``base_size * s``. ``mode="sliding"`` runs each scaled image through
    :func:`pspnet.engine.sliding.sliding_window` with ``crop_size`` (default: the whole scaled
    image, i.e. one window). ``softmax=False`` averages raw logits instead of probabilities.
    """
    if mode not in ("whole", "sliding"):
        raise ValueError(f"mode must be 'whole' or 'sliding', got {mode!r}")
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales must be positive numbers, got {list(scales)!r}")
    h, w = images.shape[-2:]
    if images.is_floating_point() and not bool(torch.isfinite(images).all()):
        raise DataError(f"input images hold {int((~torch.isfinite(images)).sum())} NaN/inf values; "
                        f"predict_logits expects finite 0-255 pixel values")
    device = model_device(model)
    x0 = normalize(images.to(device))
    total = None
    for s in scales:
        size = base_resize_shape(h, w, base_size, s)
        x = _resize(x0, size)
        variants = [x, x.flip(-1)] if flip else [x]
        for i, xv in enumerate(variants):
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                if mode == "sliding":
                    from .sliding import sliding_window
                    out = sliding_window(model, xv, crop_size or size, stride_rate)
                else:
                    out = model(xv)
            out = out.float()
            if i == 1:
                out = out.flip(-1)
            out = _resize(out, (h, w))
            if softmax:
                out = out.softmax(1)
            total = out if total is None else total + out
    return total / (len(scales) * (2 if flip else 1))
