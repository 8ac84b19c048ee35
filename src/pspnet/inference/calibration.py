"""Calibration images for static int8 quantisation (the torch PT2E path and the ONNX Runtime one).

Static quantisation fixes each activation's int8 range from the values seen on a few
representative images (ONNX Runtime's ``quantize_static`` with ``CalibrationMethod.MinMax``, the
observers of PyTorch's PT2E ``prepare_pt2e``). Both paths build one graph per input shape, so the
calibration images are normalised like the model's input, resized to that shape and packed into its
batch size.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import torch
from torch.nn import functional as F

from ..data.transforms import normalize

log = logging.getLogger("pspnet.fast")

__all__ = ["calibration_batches", "or_first_batch", "packed"]


def _as_float_batch(x: torch.Tensor) -> torch.Tensor:
    """A normalised float ``N x 3 x H x W`` batch from one image or a batch, uint8 (normalised here)
    or already normalised float."""
    x = torch.as_tensor(x)
    if x.dim() == 3:
        x = x[None]
    if not x.is_floating_point():  # uint8 image(s): normalise like the model's input
        x = normalize(x)
    return x.float()


def calibration_batches(calibration: Iterable[torch.Tensor] | None) -> list[torch.Tensor] | None:
    """The calibration images as normalised float batches (``None`` when none were given)."""
    return None if calibration is None else [_as_float_batch(c) for c in calibration]


def or_first_batch(calibration: list[torch.Tensor] | None, x: torch.Tensor) -> list[torch.Tensor]:
    """The calibration batches, or (with a warning) the first input batch when none were given."""
    if calibration:
        return calibration
    log.warning("int8 without calibration images: calibrating on the first input batch; pass "
                "calibration=[...] (a few dozen representative images) for better accuracy")
    return [x]


def _resized_images(calibration: Sequence[torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
    """Every calibration image, resized to the graph's ``H x W``: one ``N x 3 x H x W`` tensor."""
    images = []
    for c in calibration:
        c = _as_float_batch(c)
        if tuple(c.shape[-2:]) != tuple(shape[-2:]):
            c = F.interpolate(c, size=tuple(shape[-2:]), mode="bilinear", align_corners=True)
        images.append(c)
    return torch.cat(images)


def packed(calibration: Sequence[torch.Tensor], shape: tuple[int, ...]) -> list[torch.Tensor]:
    """Calibration images resized to the graph's ``H x W`` and packed into batches of its batch size, the
    last one filled up with its own images again: one pass per ``shape[0]`` images.

    Up to pspnet 0.8.0 each image was its own batch, tiled to the graph's batch size: a video's
    8 x 3 x 360 x 480 batch (4 frames and their mirrors) took 8 passes of 8 copies of one frame. For
    ONNX Runtime's min/max calibration the ranges, so the int8 model, are the same either way (a
    repeated image moves no minimum or maximum; tested); PT2E's histogram observers merge what they
    see differently, so torch's int8 changed a little, and its agreement was measured again."""
    images, batch = _resized_images(calibration, shape), shape[0]
    out = []
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        if len(chunk) < batch:
            chunk = chunk.repeat(-(-batch // len(chunk)), 1, 1, 1)[:batch]
        out.append(chunk.contiguous())
    return out
