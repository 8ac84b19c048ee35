"""``pspnet data check``: walk a dataset and report every problem, plus per-class pixel counts.

Each image/label pair is checked on its own and every problem is collected (nothing stops at the
first): missing files, files that cannot be decoded (or colour labels with an unknown colour),
image/label size mismatches and label values that are neither a class nor the ignore index.
Labels that hold only 0 and 255 (binary masks saved as black/white images, read as class 0 and
ignored pixels) are pointed out with their fix, ``data.label_map={255: 1}``. The class pixel counts
are what ``train.class_weights: auto`` is computed from (:func:`median_frequency_weights`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..errors import DataError
from .datasets import DatasetInfo, LabelMap, SegmentationDataset, build_dataset, dataset_info
from .datasets.base import map_label, size_mismatch_message
from .io import read_image, read_label

KINDS = ("missing", "unreadable", "size", "values")


@dataclass
class Problem:
    """One problem of one file; ``kind`` is one of :data:`KINDS`."""

    kind: str
    path: str
    message: str


@dataclass
class CheckReport:
    """What :func:`check_dataset` found; ``ok`` is False when there is any problem."""

    name: str
    split: str
    root: str
    info: DatasetInfo
    num_pairs: int
    problems: list[Problem] = field(default_factory=list)
    class_pixels: np.ndarray | None = None  # int64 [num_classes]
    ignore_pixels: int = 0
    sizes: Counter = field(default_factory=Counter)  # (width, height) -> images
    unlabelled: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def hints(self) -> list[str]:
        """Likely mistakes that are not errors: 0/255 masks read as class 0 and ignored pixels."""
        info, pixels = self.info, self.class_pixels
        raw_ids = info.id_to_train is None and info.color_to_train is None  # the files hold class ids as they are
        if (raw_ids and pixels is not None and info.num_classes >= 2 and info.ignore_index == 255 and pixels[0] > 0
                and not pixels[1:].any() and self.ignore_pixels > 0
                and not any(p.kind == "values" for p in self.problems)):
            return [(f"every label holds only 0 and 255: class 0 ({info.class_names[0]}) and the ignore index, so "
                     f"a model trained on them sees one class and learns to predict it everywhere. If these are "
                     f"binary masks whose 255 means {info.class_names[1]}, map it: data.label_map={{255: 1}} "
                     f"(in the config's data section, or as the override 'data.label_map={{255: 1}}')")]
        out = []
        if raw_ids and any(p.kind == "values" for p in self.problems):
            out.append("label values that are not classes: if the files hold grey levels (0/255, 0/128/255, ...) "
                       "or other codes, map them to classes with data.label_map (label-file value -> class id or "
                       "ignore); 'pspnet data check --data-root DIR' without --dataset recognises the encoding and "
                       "prints the exact map")
        lm = info.label_map
        if lm and info.ignore_index not in lm and self.ignore_pixels > 0:
            total = int(self.ignore_pixels) + (int(pixels.sum()) if pixels is not None else 0)
            mapped = [k for k, v in lm.items() if v == "ignore" or v == info.ignore_index]
            also = f" (with the values {mapped} mapped to ignore)" if mapped else ""
            out.append(f"label-file value {info.ignore_index} is not in data.label_map {_fmt_map(lm)}, so it is read "
                       f"as ignore: {int(self.ignore_pixels):,} px{also}, {100 * self.ignore_pixels / total:.2f}% of "
                       f"the pixels, never trained on. If {info.ignore_index} is a class, map it (e.g. "
                       f"{info.ignore_index}: {info.num_classes - 1}); if it marks unlabelled pixels, say so with "
                       f"{info.ignore_index}: ignore")
        return out

    def to_dict(self) -> dict[str, Any]:
        pixels = self.class_pixels if self.class_pixels is not None else np.zeros(self.info.num_classes, np.int64)
        return {
            "dataset": self.name, "split": self.split, "root": self.root, "pairs": self.num_pairs, "ok": self.ok,
            "num_classes": self.info.num_classes, "ignore_index": self.info.ignore_index,
            "problems": [vars(p) for p in self.problems],
            "class_pixels": [{"id": i, "name": n, "pixels": int(c)}
                             for i, (n, c) in enumerate(zip(self.info.class_names, pixels))],
            "ignore_pixels": int(self.ignore_pixels),
            "image_sizes": [{"width": w, "height": h, "images": k} for (w, h), k in self.sizes.most_common()],
            "unlabelled_images": self.unlabelled, "hints": self.hints,
        }

    def format(self) -> str:
        info = self.info
        lines = [f"dataset {self.name}, split {self.split}, root {self.root}: {self.num_pairs} image/label pairs, "
                 f"{info.num_classes} classes, ignore index {info.ignore_index}"]
        if self.sizes:
            shown = ", ".join(f"{w}x{h}: {k}" for (w, h), k in self.sizes.most_common(5))
            more = f" (+{len(self.sizes) - 5} other sizes)" if len(self.sizes) > 5 else ""
            lines.append(f"image sizes (width x height: images): {shown}{more}")
        if self.unlabelled:
            lines.append(f"{self.unlabelled} image(s) have no label (test-style list): only the images were checked")
        if self.problems:
            by_kind = Counter(p.kind for p in self.problems)
            files = len({p.path for p in self.problems})
            lines.append(f"{len(self.problems)} problem(s) in {files} file(s) ("
                         + ", ".join(f"{k}: {by_kind[k]}" for k in KINDS if by_kind[k]) + "):")
            lines += [f"  [{p.kind}] {p.message}" for p in self.problems]
        else:
            lines.append("problems: none")
        lines.append(self.format_table())
        absent = [n for n, c in zip(info.class_names, self.class_pixels) if c == 0] \
            if self.class_pixels is not None else []
        if absent and self.class_pixels is not None and self.class_pixels.sum():
            lines.append(f"note: {len(absent)} class(es) have no pixels in this split: {', '.join(absent[:10])}"
                         + (" ..." if len(absent) > 10 else ""))
        lines += [f"warning: {h}" for h in self.hints]
        lines.append("result: OK" if self.ok else f"result: {len(self.problems)} error(s)")
        return "\n".join(lines)

    def format_table(self) -> str:
        pixels = self.class_pixels if self.class_pixels is not None else np.zeros(self.info.num_classes, np.int64)
        total = int(pixels.sum()) + int(self.ignore_pixels)
        width = max([len("class"), len("(ignore)")] + [len(n) for n in self.info.class_names])

        def pct(c: int) -> str:
            return f"{100.0 * c / total:6.2f}" if total else "     -"

        rows = [f"{'id':>4}  {'class':<{width}}  {'pixels':>14}  {'%':>6}"]
        for i, (name, c) in enumerate(zip(self.info.class_names, pixels)):
            rows.append(f"{i:>4}  {name:<{width}}  {int(c):>14,}  {pct(int(c))}")
        rows.append(f"{self.info.ignore_index:>4}  {'(ignore)':<{width}}  {int(self.ignore_pixels):>14,}  "
                    f"{pct(int(self.ignore_pixels))}")
        rows.append(f"{'':>4}  {'total':<{width}}  {total:>14,}  {pct(total) if total else '     -'}")
        return "\n".join(rows)


def class_pixels(label: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixels of each class ``0..num_classes-1`` in a label map (int64); other values (the ignore index,
    values outside the classes) are not counted."""
    flat = label.ravel()
    return np.bincount(flat[flat < num_classes].astype(np.int64), minlength=num_classes)[:num_classes]


def median_frequency_weights(pixels: np.ndarray) -> list[float]:
    """Class weights ``sqrt(median frequency / frequency)`` (median frequency balancing, Eigen & Fergus
    2015, softened by the square root): ``frequency`` is a class's share of the labelled pixels, the
    median is over the classes present. Rare classes weigh more than 1, common ones less; a class
    with no pixels gets 0 (it has nothing to weigh). Rounded to 4 decimals (what the run records)."""
    pixels = np.asarray(pixels, dtype=np.float64)
    if pixels.sum() <= 0:
        raise DataError("class weights: the training labels have no labelled pixels (every pixel is ignored)")
    freq = pixels / pixels.sum()
    median = float(np.median(freq[freq > 0]))
    return [round(float(np.sqrt(median / f)), 4) if f > 0 else 0.0 for f in freq]


def _fmt_map(label_map) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in label_map.items()) + "}"


def _out_of_range(label: np.ndarray, raw: np.ndarray, info: DatasetInfo, lbl_path: Path) -> Problem | None:
    bad = (label >= info.num_classes) & (label != info.ignore_index)
    if not bad.any():
        return None
    values, counts = np.unique(label[bad], return_counts=True)
    parts = []
    for v, c in zip(values[:8], counts[:8]):
        ys, xs = np.nonzero(label == v)
        raw_note = ""
        if raw.ndim == 2 and int(raw[ys[0], xs[0]]) != int(v):
            raw_note = f" (file value {int(raw[ys[0], xs[0]])})"
        parts.append(f"{int(v)}{raw_note}: {int(c)} px, first at (x={xs[0]}, y={ys[0]})")
    more = f"; and {len(values) - 8} more values" if len(values) > 8 else ""
    return Problem("values", str(lbl_path),
                   f"{lbl_path}: label values outside the classes 0..{info.num_classes - 1} of {info.name} and "
                   f"the ignore value {info.ignore_index}: " + "; ".join(parts) + more)


def check_pair(img_path: Path, lbl_path: Path | None, info: DatasetInfo) -> dict[str, Any]:
    """Check one pair; returns its problems, image size and label histogram (class ids, ignore)."""
    problems: list[Problem] = []
    image_hw = label = None
    if not img_path.is_file():
        problems.append(Problem("missing", str(img_path), f"{img_path}: image file not found"))
    else:
        try:
            image_hw = read_image(img_path).shape[:2]
        except DataError as e:
            problems.append(Problem("unreadable", str(img_path), str(e)))
        except Exception as e:  # noqa: BLE001 - report, never stop the walk
            problems.append(Problem("unreadable", str(img_path), f"{img_path}: {type(e).__name__}: {e}"))
    hist = np.zeros(info.num_classes, np.int64)
    ignore = 0
    if lbl_path is not None:
        if not lbl_path.is_file():
            problems.append(Problem("missing", str(lbl_path), f"{lbl_path}: label file not found"))
        else:
            try:
                raw = read_label(lbl_path, palette_to_rgb=info.color_coded)
                label = map_label(raw, info, lbl_path)
            except DataError as e:
                problems.append(Problem("unreadable", str(lbl_path), str(e)))
            except Exception as e:  # noqa: BLE001
                problems.append(Problem("unreadable", str(lbl_path), f"{lbl_path}: {type(e).__name__}: {e}"))
            else:
                if image_hw is not None and label.shape[:2] != image_hw:
                    problems.append(Problem("size", str(lbl_path),
                                            size_mismatch_message(img_path, lbl_path, image_hw, label.shape[:2])))
                p = _out_of_range(label, raw, info, lbl_path)
                if p:
                    problems.append(p)
                hist = class_pixels(label, info.num_classes)
                ignore = int(np.count_nonzero(label == info.ignore_index))
    return {"problems": problems, "size": None if image_hw is None else (image_hw[1], image_hw[0]),
            "hist": hist, "ignore": ignore, "labelled": lbl_path is not None}


class _PairChecks(Dataset):
    def __init__(self, dataset: SegmentationDataset) -> None:
        self.pairs, self.info = dataset.pairs, dataset.info

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return check_pair(*self.pairs[index], self.info)


def _keep(item: Any) -> Any:
    return item


def check_dataset(dataset: SegmentationDataset, *, name: str | None = None, split: str = "", root: str = "",
                  workers: int = 0, progress: bool = True) -> CheckReport:
    """Check every pair of ``dataset`` (in ``workers`` processes) and collect all problems."""
    info = dataset.info
    report = CheckReport(name or info.name, split, str(root), info, len(dataset),
                         class_pixels=np.zeros(info.num_classes, np.int64))
    loader = DataLoader(_PairChecks(dataset), batch_size=None, num_workers=workers, collate_fn=_keep)
    desc = f"checking {report.name} {split}".rstrip()
    for item in tqdm(loader, total=len(dataset), desc=desc, unit="img", disable=not progress, dynamic_ncols=True):
        report.problems += item["problems"]
        if item["size"] is not None:
            report.sizes[item["size"]] += 1
        report.class_pixels += item["hist"]
        report.ignore_pixels += item["ignore"]
        report.unlabelled += not item["labelled"]
    return report


def check_splits(name: str, root: str | Path, splits: Sequence[tuple[str, str | None]], *,
                 num_classes: int | None = None, class_names: Sequence[str] | None = None, workers: int = 0,
                 progress: bool = True, label_map: LabelMap | None = None, label_colors=None) -> list[CheckReport]:
    """Build each ``(split, list_file)`` of a dataset without failing on missing files, and check it
    (``label_map``: ``data.label_map``, the user's label values -> classes)."""
    info = dataset_info(name, num_classes, class_names, label_map=label_map, label_colors=label_colors)
    reports = []
    for split, list_file in splits:
        ds = build_dataset(name, root, split, list_file=list_file, info=info, check_labels=False, check_files=False)
        reports.append(check_dataset(ds, name=name, split=split if not list_file else f"{split} ({list_file})",
                                     root=str(root), workers=workers, progress=progress))
    return reports


def write_json(reports: Sequence[CheckReport], path: str | Path) -> None:
    from ..files import write_text_output
    write_text_output(path, json.dumps([r.to_dict() for r in reports], indent=2) + "\n")
