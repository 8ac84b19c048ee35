"""Confusion matrix and the standard segmentation metrics: per-class IoU/accuracy, mIoU, mAcc, allAcc.

Convention for classes absent from the ground truth: their IoU and accuracy are NaN (the
denominator of accuracy is zero; IoU is NaN when a class is neither in the ground truth nor
predicted) and ``mIoU``/``mAcc`` are the NaN-mean over the remaining classes (Cityscapes style).
A class absent from the ground truth but predicted somewhere gets IoU 0 and counts in the mean.
The original release's ``intersectionAndUnion`` adds 1e-10 to denominators instead, which makes
absent classes count as 0; ``absent="zero"`` reproduces that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch

__all__ = ["ConfusionMatrix", "SegmentationMetrics"]


@dataclass
class SegmentationMetrics:
    iou: list[float]
    acc: list[float]
    miou: float
    macc: float
    all_acc: float

    def as_dict(self, class_names: Sequence[str] | None = None) -> dict:
        names = list(class_names) if class_names else [str(i) for i in range(len(self.iou))]
        return {"mIoU": self.miou, "mAcc": self.macc, "allAcc": self.all_acc,
                "per_class": [{"name": n, "iou": i, "acc": a} for n, i, a in zip(names, self.iou, self.acc)]}


class ConfusionMatrix:
    """``matrix[t, p]`` counts pixels of true class ``t`` predicted as ``p``; accumulated on the
    tensors' device with one ``bincount`` per update. Pixels whose target is ``ignore_index`` (or
    outside ``[0, num_classes)``) are skipped."""

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str | None = None) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.matrix.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """``pred``: class indices (any shape) or logits ``N x C x H x W``; ``target``: same shape as indices."""
        if pred.dim() == target.dim() + 1:
            pred = pred.argmax(1)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} does not match target shape {tuple(target.shape)}")
        if self.matrix.device != target.device:
            self.matrix = self.matrix.to(target.device)
        n = self.num_classes
        t = target.reshape(-1)
        p = pred.reshape(-1)
        if t.dtype == torch.uint8:  # cheap path: uint8 target, ignore 255 >= n
            t = t.to(torch.int32)
        valid = (t >= 0) & (t < n)
        idx = t * n + p.to(t.dtype)
        if not bool(valid.all()):
            idx = idx[valid]
        self.matrix += torch.bincount(idx, minlength=n * n)[: n * n].reshape(n, n).to(torch.int64)

    def merge(self, other: "ConfusionMatrix") -> None:
        self.matrix += other.matrix.to(self.matrix.device)

    def all_reduce(self) -> None:
        """Sum over DDP ranks (no-op when not distributed)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.matrix)

    def compute(self, absent: Literal["nan", "zero"] = "nan") -> SegmentationMetrics:
        m = self.matrix.double().cpu()
        tp = m.diag()
        gt = m.sum(1)
        pred = m.sum(0)
        union = gt + pred - tp
        if absent == "zero":
            iou = tp / (union + 1e-10)
            acc = tp / (gt + 1e-10)
            miou, macc = iou.mean(), acc.mean()
        else:
            iou = torch.where(union > 0, tp / union.clamp(min=1), torch.nan)
            acc = torch.where(gt > 0, tp / gt.clamp(min=1), torch.nan)
            miou, macc = iou.nanmean(), acc.nanmean()
        total = m.sum()
        all_acc = (tp.sum() / total).item() if total > 0 else float("nan")
        return SegmentationMetrics(iou.tolist(), acc.tolist(), float(miou), float(macc), all_acc)
