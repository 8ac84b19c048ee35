"""Test-time inference: whole image (optionally resized to a base size), multi-scale and flip.

All functions take uint8 or float 0-255 images ``N x 3 x H x W`` (normalisation happens here)
and return logits (or class probabilities averaged over the test-time variants) at ``H x W``.
Multi-scale testing ("MS" in the paper's ablations, Sec. 5.1) averages the class scores of
several scaled copies of the image; the original release uses scales 0.5 ... 1.75 and adds the
horizontally flipped image. Any image size works (no ``8n + 1`` rule): the model's logits are
bilinearly resized back to each variant's input and then to the image's size.

``model`` may be any callable mapping a normalised float batch to logits: a PSPNet, or what
``pspnet.inference.prepare.prepare_for_inference`` returns (which has a ``.device``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..data.transforms import normalize
from ..errors import DataError
from ..models.pspnet import check_image_batch


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


PROTOCOLS = ("release", "logit-average")
"""Test-time averaging: ``release`` reproduces the original release's ``tool/test.py``;
``logit-average`` is pspnet 0.1's older procedure (see :func:`predict_logits`)."""


def release_resize_shape(h: int, w: int, base_size: int | None, scale: float = 1.0) -> tuple[int, int]:
    """The original release's scaled size: the long side becomes ``round(scale * base_size)`` (Python's
    ``round``), the short side ``round(long / max(h, w) * short)``. Without ``base_size`` the long side
    is ``round(scale * max(h, w))``."""
    long_size = round(scale * (base_size or max(h, w)))
    if h > w:
        return long_size, round(long_size / float(h) * w)
    return round(long_size / float(w) * h), long_size


def min_input_size(model) -> int:
    """The smallest height/width ``model`` (a PSPNet or a prepared runner) can segment (1 if unknown)."""
    size = getattr(model, "min_input_size", None)
    if isinstance(size, int):
        return size
    config = getattr(model, "config", None)
    return int(getattr(config, "output_stride", 1))


@torch.no_grad()
def network_calls(images: int, scales: Sequence[float], flip: bool, mode: str, protocol: str) -> int | None:
    """How many times :func:`predict_logits` calls the network for ``images`` images, one at a time:
    once per scale, twice with ``flip`` under ``logit-average`` (the release protocol batches the
    flipped image with the original); None in sliding mode, where it depends on each image's size."""
    if mode != "whole":
        return None
    return images * len(scales) * (2 if flip and protocol != "release" else 1)


def predict_logits(model: nn.Module, images: torch.Tensor, *, base_size: int | None = None,
                   scales: Sequence[float] = (1.0,), flip: bool = False, mode: str = "whole",
                   crop_size: Sequence[int] | None = None, stride_rate: float = 2 / 3,
                   autocast_dtype: torch.dtype | None = None, softmax: bool = True,
                   protocol: str = "release") -> torch.Tensor:
    """Class probabilities (or scores) at the input's resolution, averaged over scales x flips.

    ``protocol="release"`` (default) is the original release's ``tool/test.py``, step for step:
    for each scale the 0-255 image's long side is resized to ``round(scale * base_size)``
    (:func:`release_resize_shape`) with half-pixel bilinear interpolation (OpenCV ``INTER_LINEAR``);
    windows of ``crop_size`` (``mode="sliding"``; ``mode="whole"``: one window, the scaled image)
    each get a softmax, with the flipped window averaged in inside each window; window
    probabilities are averaged, the padding removed, and the result resized to the image's size with
    half-pixel bilinear interpolation; the scales are averaged. ``softmax`` is ignored here.

    ``protocol="logit-average"`` is pspnet 0.1's procedure: the long side becomes
    ``base_size * scale`` (:func:`base_resize_shape`), resizes use ``align_corners=True``, window
    logits are averaged, flip is applied to the whole scaled image, and ``softmax=False`` averages
    raw logits over the variants.
    """
    if mode not in ("whole", "sliding"):
        raise ValueError(f"mode must be 'whole' or 'sliding', got {mode!r}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales must be positive numbers, got {list(scales)!r}")
    # before any resizing hides it (a 3x3 image upsampled to the base size is not a segmentation)
    check_image_batch(images, min_input_size(model), normalised=False)
    h, w = images.shape[-2:]
    if images.is_floating_point() and not bool(torch.isfinite(images).all()):
        raise DataError(f"input images hold {int((~torch.isfinite(images)).sum())} NaN/inf values; "
                        f"predict_logits expects finite 0-255 pixel values")
    device = model_device(model)
    if protocol == "release":
        return _predict_release(model, images.to(device).float(), base_size, scales, flip, mode, crop_size,
                                stride_rate, autocast_dtype, device)
    from .sliding import sliding_window
    x0 = normalize(images.to(device))
    total = None
    for s in scales:
        size = base_resize_shape(h, w, base_size, s)
        x = _resize(x0, size)
        variants = [x, x.flip(-1)] if flip else [x]
        for i, xv in enumerate(variants):
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                if mode == "sliding":
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


def _predict_release(model, images: torch.Tensor, base_size: int | None, scales: Sequence[float], flip: bool,
                     mode: str, crop_size: Sequence[int] | None, stride_rate: float,
                     autocast_dtype: torch.dtype | None, device: torch.device) -> torch.Tensor:
    """:func:`predict_logits` with ``protocol="release"`` on float 0-255 images already on ``device``."""
    from .sliding import sliding_window
    h, w = images.shape[-2:]
    total = None
    for s in scales:
        size = release_resize_shape(h, w, base_size, s)
        # resize the 0-255 image, then normalise: both are linear, so this equals the release's
        # cv2.resize of the image followed by its mean/std normalisation and mean padding
        x = normalize(_resize(images, size, align_corners=False))
        crop = tuple(crop_size) if mode == "sliding" and crop_size else size
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            probs = sliding_window(model, x, crop, stride_rate, softmax=True, flip=flip)
        probs = _resize(probs.float(), (h, w), align_corners=False)
        total = probs if total is None else total + probs
    return total / len(scales)
