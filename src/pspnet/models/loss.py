"""PSPNet's training loss: cross-entropy on the main output plus 0.4 x the auxiliary loss (Sec. 3.4).

The loss compares logits upsampled bilinearly to the label's size with the labels. Given logits at
the network's output stride (``PSPNet(x, upsample=False)``, what the trainer passes), it upsamples them
itself; on a CPU it does so with a kernel (``kernels/upsampled_ce.cpp``) that computes each pixel's
cross-entropy straight from the low-resolution logits, forward and backward, so the full-resolution
logits (11 x H x W floats per image, cast, log-softmaxed and zero-filled several times over in eager
PyTorch) never exist. Elsewhere, or with ``PSPNET_CPU_KERNELS=0``, it calls ``F.interpolate``.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..labels import IGNORE_INDEX
from . import kernels

__all__ = ["PSPNetLoss", "upsampled_ce_available", "upsampled_cross_entropy"]


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    p, i64, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    return kernels.library("upsampled_ce", {
        "pspnet_upsampled_ce_forward": [p, p, p, i64, i64, i64, i64, i64, i64, i64, c_int, c_int, p, p],
        "pspnet_upsampled_ce_backward": [p, p, p, p, p, i64, i64, i64, i64, i64, i64, i64, c_int, c_int, p]})


class _UpsampledCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, class_weights, ignore_index, align_corners):
        lib, threads = _library(), torch.get_num_threads()
        n, k, h, w = logits.shape
        height, width = target.shape[-2:]
        rows = logits.detach().permute(0, 2, 3, 1).float().contiguous()  # [N, h, w, K]
        target = target.contiguous()
        weights = None if class_weights is None else class_weights.float().contiguous()
        loss = rows.new_empty(n, height, width)
        lse = rows.new_empty(n, height, width)
        bad = lib.pspnet_upsampled_ce_forward(kernels.ptr(rows), kernels.ptr(target), kernels.ptr(weights), n, h, w,
                                              k, height, width, ignore_index, int(align_corners), threads,
                                              kernels.ptr(loss), kernels.ptr(lse))
        if bad:
            wrong = target[(target != ignore_index) & ((target < 0) | (target >= k))]
            raise IndexError(f"label {int(wrong[0])} is out of range for {k} classes (and is not the ignore index "
                             f"{ignore_index}): check the dataset's label mapping")
        ctx.save_for_backward(rows, target, weights, lse)
        ctx.meta = (logits.shape, logits.dtype, ignore_index, align_corners)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        rows, target, weights, lse = ctx.saved_tensors
        shape, dtype, ignore_index, align_corners = ctx.meta
        n, k, h, w = shape
        height, width = target.shape[-2:]
        grad_loss = grad_loss.float().contiguous()
        grad_rows = torch.empty_like(rows)
        _library().pspnet_upsampled_ce_backward(kernels.ptr(rows), kernels.ptr(target), kernels.ptr(weights),
                                                kernels.ptr(lse), kernels.ptr(grad_loss), n, h, w, k, height, width,
                                                ignore_index, int(align_corners), torch.get_num_threads(),
                                                kernels.ptr(grad_rows))
        return grad_rows.permute(0, 3, 1, 2).to(dtype), None, None, None, None


def upsampled_ce_available() -> bool:
    """Whether the loss upsamples low-resolution logits with the CPU kernel (not disabled, and it builds)."""
    return kernels.enabled() and _library() is not None


def _kernel_applies(logits: torch.Tensor, target: torch.Tensor) -> bool:
    return (logits.device.type == "cpu" and target.device.type == "cpu" and logits.dim() == 4
            and target.dtype == torch.int64 and target.dim() == 3 and target.shape[0] == logits.shape[0]
            and logits.dtype in (torch.float32, torch.bfloat16, torch.float16)
            and not torch.compiler.is_compiling() and upsampled_ce_available())


def upsampled_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                            ignore_index: int = IGNORE_INDEX, align_corners: bool = True) -> torch.Tensor:
    """Per-pixel ``F.cross_entropy(F.interpolate(logits, target.shape[-2:], mode="bilinear",
    align_corners=align_corners), target, weight, ignore_index=ignore_index, reduction="none")`` in
    float32: the CPU kernel where it applies (module docstring), else exactly that expression."""
    if _kernel_applies(logits, target):
        return _UpsampledCrossEntropy.apply(logits, target, weight, ignore_index, align_corners)
    full = F.interpolate(logits, target.shape[-2:], mode="bilinear", align_corners=align_corners)
    return F.cross_entropy(full.float(), target, weight=weight, ignore_index=ignore_index, reduction="none")


class PSPNetLoss(nn.Module):
    """Args:
        aux_weight: weight of the auxiliary loss (0.4 in the paper).
        ignore_index: label value that contributes no loss (255).
        class_weights: optional per-class weights for the cross-entropy.
        align_corners: bilinear convention for logits smaller than the labels (the model's).
        ohem_thresh: if set, online hard example mining: keep the pixels whose loss exceeds
            ``-log(ohem_thresh)`` (at least the ``ohem_min_kept`` hardest). The loss is the class-weighted
            one, so with ``class_weights`` a rare class counts as hard at higher confidence (a pixel of
            weight 2 stays hard up to p(true) = sqrt(thresh)); without weights it is p(true) < thresh.
    """

    def __init__(self, aux_weight: float = 0.4, ignore_index: int = IGNORE_INDEX,
                 class_weights: Sequence[float] | torch.Tensor | None = None,
                 ohem_thresh: float | None = None, ohem_min_kept: int = 100_000, align_corners: bool = True) -> None:
        super().__init__()
        self.aux_weight, self.ignore_index, self.align_corners = aux_weight, ignore_index, align_corners
        self.ohem_thresh, self.ohem_min_kept = ohem_thresh, ohem_min_kept
        weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weight, persistent=False)

    def _ce(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[-2:] != target.shape[-2:]:  # logits at the output stride: upsample here
            if not _kernel_applies(logits, target):
                logits = F.interpolate(logits, target.shape[-2:], mode="bilinear", align_corners=self.align_corners)
            else:
                pixel_loss = _UpsampledCrossEntropy.apply(logits, target, self.class_weights, self.ignore_index,
                                                          self.align_corners)
                if self.ohem_thresh is not None:
                    return self._ohem(pixel_loss.flatten(), target)
                # F.cross_entropy's mean: sum(w[t] * nll) / sum(w[t]) over the valid pixels
                valid = target != self.ignore_index
                if self.class_weights is None:
                    return pixel_loss.sum() / valid.sum()
                return pixel_loss.sum() / (self.class_weights[target.clamp(min=0) * valid] * valid).sum()
        logits = logits.float()
        if self.ohem_thresh is None:
            return F.cross_entropy(logits, target, weight=self.class_weights, ignore_index=self.ignore_index)
        pixel_loss = F.cross_entropy(logits, target, weight=self.class_weights, ignore_index=self.ignore_index,
                                     reduction="none").flatten()
        return self._ohem(pixel_loss, target)

    def _ohem(self, pixel_loss: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The mean loss of the hard pixels (class docstring) from the flat per-pixel losses."""
        valid = target.flatten() != self.ignore_index
        if not valid.any():
            return pixel_loss.sum() * 0.0
        losses = pixel_loss[valid]
        # Hard: loss > -log(thresh); p(true class) < thresh for unweighted CE (weights move it, docstring).
        hard = losses > -torch.log(torch.tensor(self.ohem_thresh))
        min_kept = min(self.ohem_min_kept, losses.numel())
        if hard.sum() < min_kept:
            return losses.topk(min_kept).values.mean()
        return losses[hard].mean()

    def forward(self, outputs: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
                target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Return the total loss and its parts (``main``, ``aux``) as floats for logging."""
        if isinstance(outputs, (tuple, list)):
            main, aux = outputs
        else:
            main, aux = outputs, None
        main_loss = self._ce(main, target)
        parts = {"main": main_loss.detach()}
        total = main_loss
        if aux is not None and self.aux_weight:
            aux_loss = self._ce(aux, target)
            parts["aux"] = aux_loss.detach()
            total = total + self.aux_weight * aux_loss
        return total, parts
