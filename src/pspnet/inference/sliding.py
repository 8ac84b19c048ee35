"""Sliding-window inference: the original release's test mode for large images (Cityscapes,
Zhao et al. 2017 Sec. 5.3 evaluates on crops of the full-resolution frames).

The normalised image is padded (centred) up to at least the crop size with zeros, which is the
ImageNet mean after normalisation, i.e. "padded with the mean". Windows of ``crop_size`` start
every ``ceil(crop * stride_rate)`` pixels; the last window of each row/column is aligned to the
image's edge so every pixel is covered. What is averaged over overlapping windows depends on
``softmax``: the original release's ``tool/test.py`` (``scale_process``/``net_process``) takes the
softmax of each window, with the horizontally flipped window averaged in *inside* each window
(``flip=True``), and averages those probabilities; ``softmax=False`` averages raw logits.

Memory stays bounded for huge images: windows are cut, run and added into the output in small
batches (``batch_size`` window positions at a time); only the output logits, a per-pixel window
count and one batch of windows are ever held.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch.nn import functional as F

__all__ = ["sliding_window", "window_starts"]


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Start offsets of the windows along one axis of a (padded) length ``>= crop``.

    Same grid as the original release: ``ceil((length - crop) / stride) + 1`` windows, the last
    one shifted back so it ends at ``length``.
    """
    if length <= crop:
        return [0]
    n = math.ceil((length - crop) / stride) + 1
    return [min(i * stride, length - crop) for i in range(n)]


def _pair(v: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(v, int):
        v = (v, v)
    v = tuple(int(x) for x in v)
    if len(v) != 2 or min(v) < 1:
        raise ValueError(f"{name} must be a positive int or (height, width), got {v!r}")
    return v  # type: ignore[return-value]


@torch.no_grad()
def sliding_window(model: Callable[[torch.Tensor], torch.Tensor], x_normalized: torch.Tensor,
                   crop_size: int | Sequence[int], stride_rate: float = 2 / 3, *,
                   batch_size: int = 4, softmax: bool = False, flip: bool = False) -> torch.Tensor:
    """Scores ``N x C x H x W`` of ``model`` over windows of ``crop_size`` (height, width).

    ``x_normalized``: ``N x 3 x H x W`` normalised images (any size; smaller than the crop is padded).
    ``stride_rate``: window stride as a fraction of the crop (2/3 as in the original release).
    ``batch_size``: window positions run per forward pass (each holds ``N`` crops, twice with flip).
    ``softmax``: average per-window class probabilities (the release) instead of logits.
    ``flip``: each window's scores are the mean of the window's and its mirror image's (mirrored back).
    """
    if x_normalized.dim() != 4:
        raise ValueError(f"expected an N x C x H x W batch, got shape {tuple(x_normalized.shape)}")
    if not 0 < stride_rate <= 1:
        raise ValueError(f"stride_rate must be in (0, 1], got {stride_rate}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ch, cw = _pair(crop_size, "crop_size")
    n, _, h, w = x_normalized.shape
    pad_h, pad_w = max(ch - h, 0), max(cw - w, 0)
    top, left = pad_h // 2, pad_w // 2
    x = x_normalized
    if pad_h or pad_w:  # zeros == the mean after normalisation
        x = F.pad(x, (left, pad_w - left, top, pad_h - top), value=0.0)
    ph, pw = x.shape[-2:]
    sh, sw = math.ceil(ch * stride_rate), math.ceil(cw * stride_rate)
    positions = [(y, xx) for y in window_starts(ph, ch, sh) for xx in window_starts(pw, cw, sw)]

    out: torch.Tensor | None = None
    count = torch.zeros(1, 1, ph, pw, device=x.device, dtype=torch.float32)
    for i in range(0, len(positions), batch_size):
        chunk = positions[i:i + batch_size]
        crops = torch.cat([x[:, :, y:y + ch, xx:xx + cw] for y, xx in chunk])  # (k*N) x 3 x ch x cw
        k = crops.shape[0]
        if flip:
            crops = torch.cat([crops, crops.flip(-1)])
        logits = model(crops).float()
        if logits.shape[-2:] != (ch, cw):  # the release's net_process resizes with align_corners=True
            logits = F.interpolate(logits, (ch, cw), mode="bilinear", align_corners=True)
        if softmax:
            logits = logits.softmax(1)
        if flip:
            logits = (logits[:k] + logits[k:].flip(-1)) / 2
        if out is None:
            out = torch.zeros(n, logits.shape[1], ph, pw, device=x.device, dtype=torch.float32)
        for j, (y, xx) in enumerate(chunk):
            out[:, :, y:y + ch, xx:xx + cw] += logits[j * n:(j + 1) * n]
            count[:, :, y:y + ch, xx:xx + cw] += 1
        del crops, logits
    assert out is not None
    out /= count
    return out[:, :, top:top + h, left:left + w].contiguous()
