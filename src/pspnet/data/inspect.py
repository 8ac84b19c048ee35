"""Recognise a data folder: its layout (a named dataset's, or one of the common layouts of one's own
data) and how its label files encode the classes, so that ``pspnet data check --data-root DIR`` works
without ``--dataset`` and can write a starter config (:mod:`.starter`).

Layouts, tried in this order (the first that fits wins):

* a named dataset by its signature folders: Cityscapes (``leftImg8bit/`` + ``gtFine/``), ADE20K
  (``images/training`` + ``annotations/training``, or ``ADEChallengeData2016/``), VOC (``JPEGImages/`` +
  ``SegmentationClass/``, or ``VOC2012/``, ``VOCdevkit/VOC2012/``), KITTI road
  (``training/image_2`` + ``training/gt_image_2``), CamVid as SegNet ships it (``train.txt`` +
  ``trainannot/``) and as its authors do (``701_StillsRaw_full/`` + ``LabeledApproved_full/``);
* ``folder``: ``<root>/<split>/images`` + ``<root>/<split>/labels`` (or ``masks``), a split per
  sub-folder (``train``, ``val``, ...);
* ``list``: ``<root>/<split>.txt`` of ``image label`` lines relative to the root;
* flat: ``<root>/images`` + ``<root>/labels`` (or ``masks``), no splits: the starter config holds
  every fifth pair out for validation through two list files.

Label encodings, from the values of up to :data:`SAMPLE_LABELS` label files spread over the splits
(what a newcomer's masks most often hold, and what each needs):

* ``ids``: class ids ``0..K-1`` as they are (8/16-bit grey, palette PNGs whose indices are the classes,
  1-bit masks), with 255 as the ignore value when present;
* ``binary``: 0/255 masks (black/white images): 255 is the object, ``label_map {255: 1}``, not ignore;
* ``levels``: a few spread grey levels such as 0/128/255 (one level per class, as image editors save
  them): the levels in increasing order become classes ``0..K-1`` through ``data.label_map``;
* ``colours``: RGB colour-coded masks (or palette PNGs whose colours are the classes): each colour found
  becomes a class, in increasing ``0xRRGGBB`` order (black first), through ``data.label_colors``;
* ``unknown``: too many distinct values to be classes (JPEG-compressed or anti-aliased masks, a photo).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import DataError
from ..labels import IGNORE_INDEX
from .datasets.base import IMAGE_EXTS, LABEL_DIRS, folder_pairs, label_dir, read_list_file
from .io import image_size, read_label

__all__ = ["Layout", "LabelEncoding", "Finding", "recognise", "recognise_layout", "label_encoding",
           "LABEL_DIRS", "SAMPLE_LABELS", "MAX_CLASS_VALUES"]

SAMPLE_LABELS = 48
"""Label files read to recognise the encoding (evenly spread over the pairs); ``data check`` reads them all."""

MAX_CLASS_VALUES = 64
"""More distinct values than this in the labels are not classes (compression or anti-aliasing)."""

VAL_NAMES = ("val", "valid", "validation", "test")
TRAIN_NAMES = ("train", "training", "trainval")
FLAT_HOLD_OUT = 5
"""The flat layout's starter config holds out every fifth pair (sorted by name) for validation."""


@dataclass
class Layout:
    """Where the pairs are: ``dataset`` is a named dataset, ``folder``, ``list`` or ``flat`` (no splits)."""

    dataset: str
    root: Path
    description: str
    train_split: str | None = None
    val_split: str | None = None
    pairs: dict[str, list[tuple[Path, Path | None]]] = field(default_factory=dict)  # generic layouts only

    @property
    def named(self) -> bool:
        return self.dataset not in ("folder", "list", "flat")

    def split_pairs(self) -> dict[str, list[tuple[Path, Path | None]]]:
        """The train and validation pairs (the flat layout's split by :data:`FLAT_HOLD_OUT`)."""
        if self.dataset != "flat":
            return {s: self.pairs[s] for s in (self.train_split, self.val_split) if s}
        every = self.pairs["all"]
        if len(every) < 2 * FLAT_HOLD_OUT:  # too few to hold any out
            return {"train": every}
        val = every[FLAT_HOLD_OUT - 1::FLAT_HOLD_OUT]
        held = set(val)
        return {"train": [p for p in every if p not in held], "val": val}


@dataclass
class LabelEncoding:
    """How the label files encode the classes (module docstring), and the mapping that reads them."""

    kind: Literal["ids", "binary", "levels", "colours", "unknown"]
    values: list[int]  # distinct values found (grey/index labels); colours: as 0xRRGGBB
    num_classes: int | None
    label_map: dict[int, int | Literal["ignore"]] | None
    ignore_present: bool
    files: int  # label files read
    modes: Counter = field(default_factory=Counter)  # PIL modes of those files
    notes: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return self.kind in ("ids", "binary", "levels", "colours")

    @property
    def label_colors(self) -> list[list[int]] | None:
        """Colour masks: the ``data.label_colors`` that reads them (class i = the i-th colour found)."""
        return [list(_rgb(c)) for c in self.values] if self.kind == "colours" else None

    def describe(self) -> str:
        vals = _short_values(self.values)
        modes = ", ".join(f"{m} {k}" for m, k in self.modes.most_common())
        head = f"{self.files} label file(s) read ({modes})"
        if self.kind == "ids":
            ign = f", {IGNORE_INDEX} = ignore" if self.ignore_present else ""
            return f"{head}: class ids, values {vals}{ign} -> {self.num_classes} classes, read as they are"
        if self.kind == "binary":
            return f"{head}: 0/255 binary masks -> 2 classes (0 background, 255 the object): data.label_map={{255: 1}}"
        if self.kind == "levels":
            return (f"{head}: {len(self.values)} grey levels {vals}, one per class -> {self.num_classes} classes "
                    f"in increasing order: data.label_map={format_label_map(self.label_map)}")
        if self.kind == "colours":
            shown = ", ".join(f"RGB{_rgb(c)} -> {i}" for i, c in enumerate(self.values))
            return (f"{head}: colour-coded masks with {len(self.values)} colours, one per class -> "
                    f"{len(self.values)} classes: {shown}: data.label_colors={json.dumps(self.label_colors)}")
        return f"{head}: {len(self.values)} distinct values ({vals}): too many to be classes"


@dataclass
class Finding:
    """A recognised data folder: its layout, label encoding (own data only) and image sizes."""

    layout: Layout
    encoding: LabelEncoding | None
    image_sizes: Counter = field(default_factory=Counter)  # (width, height) -> sampled images

    @property
    def dataset(self) -> str:
        """The ``data.dataset`` that reads it (the flat layout reads through list files)."""
        return "list" if self.layout.dataset == "flat" else self.layout.dataset

    @property
    def usable(self) -> bool:
        return self.layout.named or (self.encoding is not None and self.encoding.usable)

    def format(self) -> str:
        lines = [f"layout: {self.layout.description}"]
        for split, pairs in self.layout.split_pairs().items():
            labelled = sum(lbl is not None for _, lbl in pairs)
            lines.append(f"  {split}: {len(pairs)} image(s)" + ("" if labelled == len(pairs) else
                                                                 f", {labelled} with a label"))
        if self.encoding is not None:
            lines.append(f"labels: {self.encoding.describe()}")
            lines += [f"note: {n}" for n in self.encoding.notes]
        if self.image_sizes:
            shown = ", ".join(f"{w}x{h}: {k}" for (w, h), k in self.image_sizes.most_common(3))
            lines.append(f"image sizes (sampled, width x height: images): {shown}")
        return "\n".join(lines)

    def data_settings(self) -> dict[str, Any]:
        """The ``data`` section keys that read this folder (dataset, root, splits, label map)."""
        lay = self.layout
        out: dict[str, Any] = {"dataset": self.dataset, "root": str(lay.root)}
        if lay.dataset != "flat":
            out["train_split"] = lay.train_split
            out["val_split"] = lay.val_split
        if self.encoding is not None and self.encoding.label_map:
            out["label_map"] = dict(self.encoding.label_map)
        if self.encoding is not None and self.encoding.label_colors:
            out["label_colors"] = self.encoding.label_colors
        return out

    @property
    def num_classes(self) -> int | None:
        return None if self.encoding is None else self.encoding.num_classes


def format_label_map(label_map: dict | None) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in (label_map or {}).items()) + "}"


def _rgb(code: int) -> tuple[int, int, int]:
    return (code >> 16) & 255, (code >> 8) & 255, code & 255


def _short_values(values: Sequence[int]) -> str:
    return ", ".join(map(str, values[:12])) + (f" ... ({len(values)} values)" if len(values) > 12 else "")


# ------------------------------------------------------------------------------------------ layouts
def _is_dir(*parts: Path) -> bool:
    return all(p.is_dir() for p in parts)


def _named_layout(root: Path) -> Layout | None:
    """A named dataset recognised by its signature folders and files."""
    if _is_dir(root / "leftImg8bit", root / "gtFine"):
        return Layout("cityscapes", root, "Cityscapes (leftImg8bit/ + gtFine/)", "train", "val")
    for base in (root, root / "ADEChallengeData2016"):
        if _is_dir(base / "images" / "training", base / "annotations" / "training"):
            return Layout("ade20k", root, "ADE20K (images/training + annotations/training)", "train", "val")
    for base in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if _is_dir(base / "JPEGImages", base / "SegmentationClass"):
            sbd = _is_dir(root / "SBD") or _is_dir(root / "benchmark_RELEASE")
            if sbd:
                return Layout("voc_aug", root, "PASCAL VOC 2012 with SBD", "train_aug", "val")
            return Layout("voc", root, "PASCAL VOC 2012 (JPEGImages/ + SegmentationClass/)", "train", "val")
    if _is_dir(root / "training" / "image_2", root / "training" / "gt_image_2"):
        return Layout("kitti_road", root, "KITTI road (training/image_2 + training/gt_image_2)", "train", None)
    if (root / "train.txt").is_file() and _is_dir(root / "trainannot"):
        return Layout("camvid", root, "CamVid, SegNet layout (train.txt + trainannot/)", "train",
                      "val" if (root / "val.txt").is_file() else None)
    if _is_dir(root / "701_StillsRaw_full", root / "LabeledApproved_full"):
        return Layout("camvid32", root, "CamVid, original 32-class layout", "all", None)
    return None


def _pick(names: Sequence[str], preferred: Sequence[str]) -> str | None:
    return next((n for n in preferred if n in names), None)


def _folder_layout(root: Path) -> Layout | None:
    splits = sorted(d.name for d in root.iterdir() if d.is_dir() and (d / "images").is_dir()
                    and label_dir(d).is_dir()) if root.is_dir() else []
    if not splits:
        return None
    train = _pick(splits, TRAIN_NAMES) or splits[0]
    val = _pick([s for s in splits if s != train], VAL_NAMES)
    pairs = {s: folder_pairs(root / s / "images", label_dir(root / s), strict=False) for s in {train, val} - {None}}
    labels = {label_dir(root / s).name for s in pairs}
    return Layout("folder", root, f"folder: <root>/<split>/images + <root>/<split>/{'|'.join(sorted(labels))}, "
                  f"splits {', '.join(splits)}", train, val, pairs)


def _list_layout(root: Path) -> Layout | None:
    lists = []
    for f in sorted(root.glob("*.txt")):
        try:
            pairs = read_list_file(f, root)
        except DataError:
            continue
        if pairs and pairs[0][1] is not None and pairs[0][0].is_file():
            lists.append((f.stem, pairs))
    if not lists:
        return None
    names = [n for n, _ in lists]
    train = _pick(names, TRAIN_NAMES) or names[0]
    val = _pick([n for n in names if n != train], VAL_NAMES)
    return Layout("list", root, f"list files: <root>/<split>.txt of 'image label' lines ({', '.join(names)})",
                  train, val, {n: p for n, p in lists if n in (train, val)})


def _flat_layout(root: Path) -> Layout | None:
    if not ((root / "images").is_dir() and label_dir(root).is_dir()):
        return None
    pairs = folder_pairs(root / "images", label_dir(root), strict=False)
    if not pairs:
        return None
    return Layout("flat", root, f"flat: <root>/images + <root>/{label_dir(root).name}, no splits (every "
                  f"{FLAT_HOLD_OUT}th pair by name is held out for validation)", "train", "val", {"all": pairs})


def recognise_layout(root: str | Path) -> Layout:
    """The layout of ``root`` (module docstring); a :class:`DataError` saying what was looked for when none fits."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: folder not found")
    for find in (_named_layout, _folder_layout, _list_layout, _flat_layout):
        layout = find(root)
        if layout is not None:
            return layout
    seen = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())[:12]
    raise DataError(
        f"{root}: no known layout. Looked for: <root>/<split>/images + <root>/<split>/labels (or masks), "
        f"<root>/images + <root>/labels (or masks), <root>/<split>.txt lists of 'image label' lines, and the "
        f"named datasets' folders (cityscapes, ade20k, voc, kitti_road, camvid). Found: {', '.join(seen) or 'nothing'}"
        f". Arrange the files in one of these layouts, or pass --dataset")


# ------------------------------------------------------------------------------------------ encodings
def _spread(items: Sequence[Any], k: int) -> list[Any]:
    if len(items) <= k:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, k).round().astype(int)]


def _pil_mode(path: Path) -> str:
    from PIL import Image
    try:
        with Image.open(path) as im:
            return im.mode
    except Exception:  # noqa: BLE001 - the read below reports it
        return "?"


def label_encoding(label_files: Sequence[Path], *, sample: int = SAMPLE_LABELS) -> LabelEncoding:
    """Recognise how ``label_files`` encode the classes from the values of up to ``sample`` of them."""
    files = _spread([Path(p) for p in label_files if Path(p).is_file()], sample)
    if not files:
        raise DataError("no label file found to read (are the label folders empty?)")
    grey: set[int] = set()
    colours: set[int] = set()
    modes: Counter = Counter()
    notes: list[str] = []
    for path in files:
        modes[_pil_mode(path)] += 1
        raw = read_label(path)
        if raw.ndim == 3:
            code = (raw[..., 0].astype(np.int64) << 16) | (raw[..., 1].astype(np.int64) << 8) | raw[..., 2]
            colours.update(int(c) for c in np.unique(code)[:4 * MAX_CLASS_VALUES])
        else:
            grey.update(int(v) for v in np.unique(raw)[:4 * MAX_CLASS_VALUES])
    if any(p.suffix.lower() in (".jpg", ".jpeg") for p in files):
        notes.append("JPEG label files: compression changes pixel values at class edges; save masks as PNG")
    if colours:
        if grey:
            notes.append("some label files are colour (RGB) images and others single-channel; use one kind")
        vals = sorted(colours)
        if all(_rgb(c)[0] == _rgb(c)[1] == _rgb(c)[2] for c in vals):
            notes.append("the RGB masks are grey: save them as 8-bit grey PNGs (mode L), e.g. "
                         "Image.open(p).convert('L').save(p)")
        elif len(vals) <= MAX_CLASS_VALUES:
            notes.append("each colour is read as a class through data.label_colors (class i = the i-th colour; "
                         "reorder the list to choose the ids); a colour not in it is an error naming the file and "
                         "pixel. Or convert the masks yourself: the colour of class i -> value i, saved as 8-bit grey "
                         "PNGs (mode L)")
        kind = "colours" if len(vals) <= MAX_CLASS_VALUES else "unknown"
        return LabelEncoding(kind, vals, len(vals) if kind == "colours" else None, None, False, len(files),
                             modes, notes)
    return _grey_encoding(sorted(grey), len(files), modes, notes)


def _grey_encoding(vals: list[int], files: int, modes: Counter, notes: list[str]) -> LabelEncoding:
    ignore = IGNORE_INDEX in vals
    if len(vals) > MAX_CLASS_VALUES:
        notes.append("these look like image values, not class ids: masks saved as JPEG or drawn with "
                     "anti-aliasing, or the image and label folders swapped; labels need one value per class")
        return LabelEncoding("unknown", vals, None, None, ignore, files, modes, notes)
    if vals == [0, IGNORE_INDEX]:
        notes.append(f"{IGNORE_INDEX} is read as class 1 (the object), not as the ignore value; the one key that "
                     f"flips that is data.label_map: leave {IGNORE_INDEX} out of it and it is ignored")
        return LabelEncoding("binary", vals, 2, {IGNORE_INDEX: 1}, False, files, modes, notes)
    ids = [v for v in vals if v != IGNORE_INDEX]
    if not ids:
        notes.append("every sampled label pixel is 255 (ignored): nothing to learn from")
        return LabelEncoding("unknown", vals, None, None, True, files, modes, notes)
    top = max(ids)
    if top < 2 * len(ids):  # at least half of 0..top present: ids (some classes may be rare)
        absent = sorted(set(range(top + 1)) - set(ids))
        if absent:
            notes.append(f"class id(s) {_short_values(absent)} appear in none of the sampled labels; if the data "
                         f"has more classes than {top + 1}, set model.num_classes")
        if top == 0:
            notes.append("the sampled labels hold only class 0: is every mask empty?")
        if ignore:
            notes.append(f"{IGNORE_INDEX} is read as the ignore value (unlabelled pixels, not trained on), not as a "
                         f"class; the one key that flips that is data.label_map: write {{{IGNORE_INDEX}: "
                         f"{max(top + 1, 2)}}} (and one more class in model.num_classes and data.class_names)")
        return LabelEncoding("ids", vals, max(top + 1, 2), None, ignore, files, modes, notes)
    levels = {v: i for i, v in enumerate(vals)}
    if ignore:
        notes.append(f"{IGNORE_INDEX} is read as class {len(vals) - 1} (the top level), not as the ignore value; if "
                     f"it marks unlabelled pixels, the one key that flips that is data.label_map: write "
                     f"{IGNORE_INDEX}: ignore in it (and one class fewer in model.num_classes and data.class_names)")
    return LabelEncoding("levels", vals, len(vals), dict(levels), False, files, modes, notes)


def recognise(root: str | Path, *, sample: int = SAMPLE_LABELS) -> Finding:
    """Layout, label encoding (own data) and sampled image sizes of the data folder ``root``."""
    layout = recognise_layout(root)
    if layout.named:
        return Finding(layout, None)
    pairs = [p for ps in layout.split_pairs().values() for p in ps]
    encoding = label_encoding([lbl for _, lbl in pairs if lbl is not None], sample=sample)
    sizes: Counter = Counter()
    for img, _ in _spread(pairs, sample):
        hw = image_size(img) if img.is_file() and img.suffix.lower() in IMAGE_EXTS else None
        if hw:
            sizes[(hw[1], hw[0])] += 1
    return Finding(layout, encoding, sizes)


def check_finding(finding: Finding, *, workers: int = 0, progress: bool = True, class_names=None) -> list:
    """``pspnet data check`` of a recognised folder: each split it found, read as the starter config reads it."""
    from .check import check_dataset, check_splits
    from .datasets import SegmentationDataset, dataset_info
    lay = finding.layout
    if lay.named:
        splits = [(s, None) for s in (lay.train_split, lay.val_split) if s]
        return check_splits(lay.dataset, lay.root, splits, workers=workers, progress=progress)
    enc = finding.encoding
    if enc is None or not enc.usable:
        return []
    info = dataset_info(finding.dataset, enc.num_classes, class_names, label_map=enc.label_map,
                        label_colors=enc.label_colors)
    return [check_dataset(SegmentationDataset(pairs, info, check_labels=False), name=lay.dataset, split=split,
                          root=str(lay.root), workers=workers, progress=progress)
            for split, pairs in lay.split_pairs().items()]
