"""Datasets by name, and the user's own data by list file or folder pair."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

from ...errors import DataError
from ...labels import IGNORE_INDEX, default_palette
from .ade20k import ade20k_info, ade20k_pairs
from .base import (DatasetInfo, SegmentationDataset, folder_pairs, read_list_file, require_files,
                   with_ignore_index)
from .camvid import camvid32_info, camvid32_pairs, camvid_info, camvid_pairs
from .cityscapes import cityscapes_info, cityscapes_pairs
from .kitti_road import kitti_road_info, kitti_road_pairs
from .voc import voc_aug_info, voc_aug_pairs, voc_info, voc_pairs

__all__ = ["DatasetInfo", "SegmentationDataset", "build_dataset", "dataset_info", "DATASETS", "GENERIC",
           "read_list_file", "folder_pairs"]

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
# (<root>/<split>/images + <root>/<split>/labels matched by file stem); they need num_classes.
GENERIC = ("list", "folder")


def generic_info(num_classes: int, class_names=None, palette=None, name: str = "custom",
                 ignore_index: int = IGNORE_INDEX) -> DatasetInfo:
    names = tuple(class_names) if class_names else tuple(f"class_{i}" for i in range(num_classes))
    if len(names) != num_classes:
        raise DataError(f"{len(names)} class names given for {num_classes} classes")
    return DatasetInfo(name, names, tuple(palette) if palette else default_palette(num_classes), ignore_index)


def dataset_info(name: str, num_classes: int | None = None, class_names=None, palette=None, *,
                 ignore_index: int = IGNORE_INDEX) -> DatasetInfo:
    """The classes, palette and label mapping of a dataset; unlabelled pixels read as ``ignore_index``
    (the user's own label files hold that value; a named dataset's void is mapped to it).

    ``class_names`` (a run config's ``data.class_names``) name a generic dataset's classes, or rename
    a named dataset's (as many names as it has classes).
    """
    if ignore_index < 0:
        raise DataError(f"ignore index {ignore_index} is negative; label images hold values >= 0 (default {IGNORE_INDEX})")
    if name in DATASETS:
        info = with_ignore_index(DATASETS[name][0](), ignore_index)
        if class_names:
            if len(class_names) != info.num_classes:
                raise DataError(f"{len(class_names)} class names given but {name} has {info.num_classes} classes")
            info = replace(info, class_names=tuple(class_names))
        return info
    if name in GENERIC:
        num_classes = num_classes or (len(class_names) if class_names else None)
        if not num_classes:
            raise DataError(f"dataset {name!r} needs model.num_classes (or data.class_names) to be set")
        return generic_info(num_classes, class_names, palette, ignore_index=ignore_index)
    raise DataError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS) + list(GENERIC)}")


def build_dataset(name: str, root: str | Path, split: str, *, transform=None, list_file: str | None = None,
                  info: DatasetInfo | None = None, num_classes: int | None = None,
                  check_labels: bool = True, check_files: bool = True) -> SegmentationDataset:
    """A dataset by name (``camvid``, ...), or ``list`` (list file) or ``folder`` (``<root>/<split>/images``
    and ``<root>/<split>/labels``).

    With ``check_files`` (training) a listed file that does not exist is an error right away;
    ``pspnet data check`` passes ``False`` to report every missing file itself.
    """
    root = Path(root)
    info = info or dataset_info(name, num_classes)
    if list_file:
        lf = Path(list_file)
        pairs = read_list_file(lf if lf.is_absolute() else root / lf, root)
    elif name in DATASETS:
        pairs = DATASETS[name][1](root, split)
    elif name == "folder":
        pairs = folder_pairs(root / split / "images", root / split / "labels", strict=check_files)
    elif name == "list":
        pairs = read_list_file(root / f"{split}.txt", root)
    else:
        raise DataError(f"unknown dataset {name!r}")
    if check_files:
        require_files(pairs, f"{name} {split} ({root})")
    return SegmentationDataset(pairs, info, transform, check_labels=check_labels)
