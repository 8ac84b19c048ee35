"""Confusion matrix and the standard segmentation metrics (Zhao et al. 2017, Sec. 4: mean IoU and
pixel accuracy): per-class IoU and accuracy, mIoU, mAcc and allAcc, the original release's three
summary numbers.

Definitions, from the confusion matrix ``M[t, p]`` (pixels of true class ``t`` predicted ``p``;
pixels labelled ``ignore_index`` or outside ``[0, num_classes)`` are never counted):

- ``IoU_c = M[c, c] / (sum_p M[c, p] + sum_t M[t, c] - M[c, c])``  (TP / (TP + FP + FN));
- ``Acc_c = M[c, c] / sum_p M[c, p]``  (TP / ground-truth pixels of ``c``, i.e. class recall);
- ``mIoU``, ``mAcc``: mean of the per-class values; ``allAcc = trace(M) / sum(M)``.

Classes absent from the ground truth, two conventions (``compute(absent=...)``):

- ``"nan"`` (default, Cityscapes style, cityscapesScripts' ``getScoreAverage``): an undefined
  ratio is NaN and means are NaN-means. A class neither in the ground truth nor predicted has
  IoU NaN and is left out of mIoU; a class absent from the ground truth but predicted somewhere
  has IoU 0 (its false positives count against it) and counts in mIoU. Accuracy of any class
  absent from the ground truth is NaN (recall is undefined) and is left out of mAcc. mIoU under
  this convention equals torchmetrics' ``MulticlassJaccardIndex(average="macro")``.
- ``"zero"``: the original release's ``intersectionAndUnion`` (``x / (d + 1e-10)``): undefined
  ratios become 0 and every class counts in the mean, which lowers mIoU/mAcc when classes are
  missing from the evaluated set (e.g. a small subset of images).

The two agree whenever every class occurs in the ground truth. ``allAcc`` has no such case.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from .labels import IGNORE_INDEX

__all__ = ["ConfusionMatrix", "SegmentationMetrics", "Absent"]

Absent = Literal["nan", "zero"]


def _nan_to_none(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


@dataclass
class SegmentationMetrics:
    """Per-class IoU / accuracy (NaN where undefined under the ``"nan"`` convention) and the means."""

    iou: list[float]
    acc: list[float]
    miou: float
    macc: float
    all_acc: float
    absent: Absent = "nan"

    def as_dict(self, class_names: Sequence[str] | None = None, json_safe: bool = False) -> dict:
        """``{"mIoU", "mAcc", "allAcc", "per_class": [{name, iou, acc}]}``; fractions in [0, 1].

        ``json_safe`` turns NaN (not valid JSON) into ``None``.
        """
        names = list(class_names) if class_names else [str(i) for i in range(len(self.iou))]
        if len(names) != len(self.iou):
            raise ValueError(f"{len(names)} class names for {len(self.iou)} classes")
        f = _nan_to_none if json_safe else float
        return {"mIoU": f(self.miou), "mAcc": f(self.macc), "allAcc": f(self.all_acc),
                "per_class": [{"name": n, "iou": f(i), "acc": f(a)} for n, i, a in zip(names, self.iou, self.acc)]}


class ConfusionMatrix:
    """``matrix[t, p]`` counts pixels of true class ``t`` predicted as ``p``.

    Accumulated on the tensors' device with ``bincount`` and no boolean masking: the target is
    shifted so that every invalid value (ignore, negative, ``>= num_classes``) lands in rows that
    are dropped afterwards. A 1024x2048 update takes about 4 ms on this project's 2-core CPU
    (``python bench/confusion_matrix.py``; ``docs/benchmarks.md``).
    """

    _CPU_CHUNK = 1 << 18

    def __init__(self, num_classes: int, ignore_index: int | None = IGNORE_INDEX,
                 device: torch.device | str | None = None) -> None:
        if not isinstance(num_classes, int) or not 1 <= num_classes <= 46000:
            raise ValueError(f"num_classes must be an integer in [1, 46000], got {num_classes!r}")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
        self._buf: torch.Tensor | None = None     # reused index buffer (see ``_counts``)

    def reset(self) -> None:
        self.matrix.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """``pred``: class indices (any shape, values in ``[0, num_classes)``) or logits ``N x C x H x W``
        (arg-maxed over dim 1); ``target``: class indices of the indices' shape (uint8 or any int type)."""
        pred, target = torch.as_tensor(pred), torch.as_tensor(target)
        if pred.dim() == target.dim() + 1 and pred.shape[1] == self.num_classes:
            pred = pred.argmax(1)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} does not match target shape {tuple(target.shape)}")
        if pred.is_floating_point() or target.is_floating_point():
            raise ValueError(f"class indices must be integers, got prediction {pred.dtype} and target {target.dtype}")
        if pred.numel() == 0:
            return
        if self.matrix.device != target.device:
            self.matrix = self.matrix.to(target.device)
        n = self.num_classes
        lo, hi = torch.aminmax(pred)
        if int(lo) < 0 or int(hi) >= n:
            raise ValueError(f"predicted class indices must lie in [0, {n - 1}], got values in [{int(lo)}, {int(hi)}]")
        counts, rows, offset = self._counts(pred.reshape(-1).to(target.device), target.reshape(-1))
        counts = counts.view(rows, n)[offset:offset + n]
        if self.ignore_index is not None and 0 <= self.ignore_index < n:
            counts[self.ignore_index] = 0
        self.matrix += counts

    def _counts(self, p: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """``bincount`` of ``row(t) * n + p`` and the row scheme: a uint8 target gets a row per value
        (rows >= n dropped later); any other target is clamped to ``-1 .. n`` and shifted by one
        (rows 0 and n + 1 dropped). On the CPU the index is built in cache-sized chunks in one
        reused int64 buffer: no 16 MB allocation (and its page faults) per call, and each chunk is
        still in cache when ``bincount`` reads it."""
        n = self.num_classes
        if t.dtype == torch.uint8 and n <= 256:
            rows, offset = 256, 0
        else:
            rows, offset = n + 2, 1
        chunk = self._CPU_CHUNK if t.device.type == "cpu" else t.numel()
        if self._buf is None or self._buf.numel() < min(chunk, t.numel()) or self._buf.device != t.device:
            self._buf = torch.empty(min(chunk, t.numel()), dtype=torch.int64, device=t.device)
        counts = torch.zeros(rows * n, dtype=torch.int64, device=t.device)
        for s in range(0, t.numel(), chunk):
            tc = t[s:s + chunk]
            idx = self._buf[: tc.numel()].copy_(tc)
            if offset:
                idx.clamp_(-1, n).add_(1)
            counts += torch.bincount(idx.mul_(n).add_(p[s:s + chunk]), minlength=rows * n)
        return counts, rows, offset

    def merge(self, other: ConfusionMatrix) -> None:
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge a {other.num_classes}-class matrix into a {self.num_classes}-class one")
        self.matrix += other.matrix.to(self.matrix.device)

    def all_reduce(self) -> None:
        """Sum over DDP ranks (no-op when not distributed)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.matrix)

    def compute(self, absent: Absent = "nan") -> SegmentationMetrics:
        """The metrics under the chosen absent-class convention (module docstring)."""
        if absent not in ("nan", "zero"):
            raise ValueError(f"absent must be 'nan' or 'zero', got {absent!r}")
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
        return SegmentationMetrics(iou.tolist(), acc.tolist(), float(miou), float(macc), all_acc, absent)
