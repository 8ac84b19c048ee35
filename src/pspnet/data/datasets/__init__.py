"""Datasets by name, and the user's own data by list file or folder pair."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np

from ...errors import DataError
from ...labels import IGNORE_INDEX, default_palette
from .ade20k import ade20k_info, ade20k_pairs
from .base import (
    DatasetInfo,
    SegmentationDataset,
    folder_pairs,
    label_dir,
    read_list_file,
    require_files,
    with_ignore_index,
)
from .camvid import camvid32_info, camvid32_pairs, camvid_info, camvid_pairs
from .cityscapes import cityscapes_info, cityscapes_pairs
from .kitti_road import kitti_road_info, kitti_road_pairs
from .voc import voc_aug_info, voc_aug_pairs, voc_info, voc_pairs

__all__ = ["DatasetInfo", "SegmentationDataset", "build_dataset", "dataset_info", "DATASETS", "GENERIC",
           "read_list_file", "folder_pairs", "label_table", "LabelMap"]

# name -> (info builder, pairs builder(root, split))
DATASETS: dict[str, tuple[Callable[[], DatasetInfo], Callable[[Path, str], list]]] = {
    "camvid": (camvid_info, camvid_pairs),
    "camvid32": (camvid32_info, camvid32_pairs),
    "cityscapes": (cityscapes_info, cityscapes_pairs),
    "ade20k": (ade20k_info, ade20k_pairs),
    "voc": (voc_info, voc_pairs),
    "voc_aug": (voc_aug_info, voc_aug_pairs),
    "kitti_road": (kitti_road_info, kitti_road_pairs),
}
# the generic formats: "list" (<root>/<split>.txt of 'image label' lines) and "folder"
# (<root>/<split>/images + <root>/<split>/labels, or masks, matched by file stem); they need num_classes.
GENERIC = ("list", "folder")

LabelMap = Mapping[int, int | Literal["ignore"]]


def label_table(label_map: LabelMap, num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """The lookup table of a label mapping: label-file value -> class id, ``"ignore"`` -> ``ignore_index``;
    values the mapping does not name stay as they are (``{255: 1}`` turns 0/255 masks into classes 0/1).

    8-bit (256 entries) when every value fits, else 16-bit label files' 65536 entries.
    """
    table: dict[int, int] = {}
    for raw, target in label_map.items():
        if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw < 65536:
            raise DataError(f"data.label_map: key {raw!r} is not a label-file value (an integer 0..65535)")
        if target == "ignore":
            target = ignore_index
        if isinstance(target, bool) or not isinstance(target, int) or \
                not (0 <= target < num_classes or target == ignore_index):
            raise DataError(f"data.label_map: {raw} -> {target!r} is neither a class (0..{num_classes - 1}) nor "
                            f"'ignore' (the ignore index {ignore_index})")
        table[raw] = target
    small = max(table, default=0) < 256 and num_classes <= 256 and ignore_index < 256
    lut = np.arange(256 if small else 65536, dtype=np.uint8 if small else np.int32)
    for raw, target in table.items():
        lut[raw] = target
    return lut


def generic_info(num_classes: int, class_names=None, palette=None, name: str = "folder",
                 ignore_index: int = IGNORE_INDEX, label_map: LabelMap | None = None,
                 label_colors=None) -> DatasetInfo:
    names = tuple(class_names) if class_names else tuple(f"class_{i}" for i in range(num_classes))
    if len(names) != num_classes:
        raise DataError(f"{len(names)} class names given for {num_classes} classes")
    lut = label_table(label_map, num_classes, ignore_index) if label_map else None
    colors = None
    if label_colors:
        colors = {tuple(int(x) for x in c): i for i, c in enumerate(label_colors)}
        if len(colors) != len(label_colors) or len(label_colors) != num_classes:
            raise DataError(f"data.label_colors: {len(label_colors)} colours ({len(colors)} different) for "
                            f"{num_classes} classes; give one colour per class, class 0 first")
        palette = palette or tuple(colors)  # the masks' own colours show the predictions
    return DatasetInfo(name, names, tuple(palette) if palette else default_palette(num_classes), ignore_index, lut,
                       color_to_train=colors, label_map=dict(label_map) if label_map else None)


def dataset_info(name: str, num_classes: int | None = None, class_names=None, palette=None, *,
                 ignore_index: int = IGNORE_INDEX, label_map: LabelMap | None = None,
                 label_colors=None) -> DatasetInfo:
    """The classes, palette and label mapping of a dataset; unlabelled pixels read as ``ignore_index``
    (the user's own label files hold that value; a named dataset's void is mapped to it).

    ``class_names`` (a run config's ``data.class_names``) name a generic dataset's classes, or rename
    a named dataset's (as many names as it has classes). ``label_map`` (``data.label_map``) maps the
    user's own label values (``list``, ``folder``) to classes or ``"ignore"``: :func:`label_table`.
    """
    if ignore_index < 0:
        raise DataError(f"ignore index {ignore_index} is negative; label images hold values >= 0 "
                        f"(default {IGNORE_INDEX})")
    if label_colors and name not in GENERIC:
        raise DataError(f"data.label_colors is for your own colour masks (datasets {' and '.join(GENERIC)}); {name} "
                        f"decodes its label files itself")
    if label_map and name not in GENERIC:
        raise DataError(f"data.label_map is for your own labels (datasets {' and '.join(GENERIC)}); {name} maps "
                        f"its label files itself")
    if name in DATASETS:
        info = with_ignore_index(DATASETS[name][0](), ignore_index)
        if class_names:
            if len(class_names) != info.num_classes:
                raise DataError(f"{len(class_names)} class names given but {name} has {info.num_classes} classes")
            info = replace(info, class_names=tuple(class_names))
        return info
    if name in GENERIC:
        num_classes = num_classes or (len(class_names) if class_names else None) or \
            (len(label_colors) if label_colors else None)
        if not num_classes:
            raise DataError(f"dataset {name!r} needs model.num_classes (or data.class_names) to be set")
        return generic_info(num_classes, class_names, palette, name=name, ignore_index=ignore_index,
                            label_map=label_map, label_colors=label_colors)
    raise DataError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS) + list(GENERIC)}")


def build_dataset(name: str, root: str | Path, split: str, *, transform=None, list_file: str | None = None,
                  info: DatasetInfo | None = None, num_classes: int | None = None,
                  check_labels: bool = True, check_files: bool = True) -> SegmentationDataset:
    """A dataset by name (``camvid``, ...), or ``list`` (list file) or ``folder`` (``<root>/<split>/images``
    and ``<root>/<split>/labels``). Splits joined with ``+`` (``train+val``) are read one after the other.

    With ``check_files`` (training) a listed file that does not exist is an error right away;
    ``pspnet data check`` passes ``False`` to report every missing file itself.
    """
    root = Path(root)
    info = info or dataset_info(name, num_classes)
    if list_file:
        lf = Path(list_file)
        pairs = read_list_file(lf if lf.is_absolute() else root / lf, root)
    else:
        # "train+val": the final model of a recipe chosen on val is trained on both, as CamVid papers do
        pairs = [pair for part in split.split("+") for pair in _split_pairs(name, root, part.strip(), check_files)]
    if check_files:
        require_files(pairs, f"{name} {split} ({root})")
    return SegmentationDataset(pairs, info, transform, check_labels=check_labels)


def _split_pairs(name: str, root: Path, split: str, check_files: bool) -> list:
    if not split:
        raise DataError("empty split name; splits are joined with '+', e.g. 'train+val'")
    if name in DATASETS:
        return DATASETS[name][1](root, split)
    if name == "folder":
        return folder_pairs(root / split / "images", label_dir(root / split), strict=check_files)
    if name == "list":
        return read_list_file(root / f"{split}.txt", root)
    raise DataError(f"unknown dataset {name!r}")
