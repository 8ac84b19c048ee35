"""Per-image scores: each evaluated image's mean IoU, pixel accuracy and worst classes, to find the
images a model fails on (``pspnet eval --per-image FILE.csv``).

An image's numbers are those of :mod:`pspnet.metrics` on that image's pixels alone, under the
``"nan"`` convention whatever the dataset-level ``absent`` is: a class neither in the image's
ground truth nor predicted in it is left out of its mIoU (counted as 0 it would make every image
with few classes look bad). A class predicted but absent from the ground truth has IoU 0 and
counts. Images are sorted worst first: by mIoU, then pixel accuracy; an image without labelled
pixels (mIoU undefined) comes last.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..files import write_output
from ..metrics import ConfusionMatrix

__all__ = ["WORST_CLASSES", "PerImageScores", "write_per_image_csv", "worst_first"]

WORST_CLASSES = 3


def _number(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


class PerImageScores:
    """Collects one record per image with :meth:`add`; :attr:`records` lists them worst first."""

    def __init__(self, class_names: Sequence[str], ignore_index: int | None) -> None:
        self.class_names = list(class_names)
        self.ignore_index = ignore_index
        self._records: list[dict[str, Any]] = []

    def add(self, index: int, path: str | None, pred: torch.Tensor, target: torch.Tensor) -> dict[str, Any]:
        """Score one image: ``pred`` and ``target`` are class indices of one shape (ignore pixels skipped)."""
        cm = ConfusionMatrix(len(self.class_names), self.ignore_index, target.device)
        cm.update(pred, target)
        m = cm.compute("nan")
        defined = sorted((iou, c) for c, iou in enumerate(m.iou) if not math.isnan(iou))
        record = {"index": index, "path": path, "mIoU": _number(m.miou), "pixel_acc": _number(m.all_acc),
                  "pixels": int(cm.matrix.sum()),
                  "worst": [{"name": self.class_names[c], "iou": iou} for iou, c in defined[:WORST_CLASSES]]}
        self._records.append(record)
        return record

    @property
    def records(self) -> list[dict[str, Any]]:
        """The records, worst image first (module docstring); JSON-ready (``None`` where undefined)."""
        return worst_first(self._records)


def worst_first(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records sorted worst image first (module docstring); also merges the records of several ranks."""
    return sorted(records, key=lambda r: (r["mIoU"] is None, r["mIoU"] or 0.0, r["pixel_acc"] or 0.0, r["index"]))


def write_per_image_csv(records: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """``records`` (:attr:`PerImageScores.records`) as CSV, in their order, written atomically. Columns:
    ``rank, index, image, mIoU, pixel_acc, labelled_pixels`` then ``worst_K, worst_K_iou`` for K = 1..3
    (empty where an image has fewer classes, or a value is undefined)."""
    header = ["rank", "index", "image", "mIoU", "pixel_acc", "labelled_pixels"]
    for k in range(1, WORST_CLASSES + 1):
        header += [f"worst_{k}", f"worst_{k}_iou"]

    def fmt(v: float | None) -> str:
        return "" if v is None else f"{v:.6f}"

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            out = csv.writer(f)
            out.writerow(header)
            for rank, r in enumerate(records, 1):
                row = [rank, r["index"], r["path"] or "", fmt(r["mIoU"]), fmt(r["pixel_acc"]), r["pixels"]]
                worst = list(r["worst"]) + [None] * (WORST_CLASSES - len(r["worst"]))
                for w in worst[:WORST_CLASSES]:
                    row += ["", ""] if w is None else [w["name"], fmt(w["iou"])]
                out.writerow(row)

    write_output(path, write)
    return Path(path)
