"""Datasets by name, and the user's own data by list file or folder pair."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ...errors import DataError
from .base import DatasetInfo, SegmentationDataset, folder_pairs, read_list_file
from .camvid import camvid_info, camvid_pairs

__all__ = ["DatasetInfo", "SegmentationDataset", "build_dataset", "dataset_info", "DATASETS", "read_list_file",
           "folder_pairs"]

# name -> (info builder, pairs builder(root, split))
DATASETS: dict[str, tuple[Callable[[], DatasetInfo], Callable[[Path, str], list]]] = {
    "camvid": (camvid_info, camvid_pairs),
}


def generic_info(num_classes: int, class_names=None, palette=None, name: str = "custom") -> DatasetInfo:
    from ..palettes import default_palette
    names = tuple(class_names) if class_names else tuple(f"class_{i}" for i in range(num_classes))
    if len(names) != num_classes:
        raise DataError(f"{len(names)} class names given for {num_classes} classes")
    return DatasetInfo(name, names, tuple(palette) if palette else default_palette(num_classes))


def dataset_info(name: str, num_classes: int | None = None, class_names=None, palette=None) -> DatasetInfo:
    if name in DATASETS:
        return DATASETS[name][0]()
    if name in ("list", "folder"):
        if not num_classes:
            raise DataError(f"dataset {name!r} needs model.num_classes (or data.class_names) to be set")
        return generic_info(num_classes, class_names, palette)
    raise DataError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS) + ['list', 'folder']}")


def build_dataset(name: str, root: str | Path, split: str, *, transform=None, list_file: str | None = None,
                  info: DatasetInfo | None = None, num_classes: int | None = None,
                  check_labels: bool = True) -> SegmentationDataset:
    """A dataset by name (``camvid``, ...), or ``list`` (list file) or ``folder`` (``<root>/<split>/images``
    and ``<root>/<split>/labels``)."""
    root = Path(root)
    info = info or dataset_info(name, num_classes)
    if list_file:
        lf = Path(list_file)
        pairs = read_list_file(lf if lf.is_absolute() else root / lf, root)
    elif name in DATASETS:
        pairs = DATASETS[name][1](root, split)
    elif name == "folder":
        pairs = folder_pairs(root / split / "images", root / split / "labels")
    elif name == "list":
        pairs = read_list_file(root / f"{split}.txt", root)
    else:
        raise DataError(f"unknown dataset {name!r}")
    return SegmentationDataset(pairs, info, transform, check_labels=check_labels)
