"""Cityscapes (Cordts et al. 2016), fine annotations, 19 evaluation classes (PSPNet paper Sec. 5.3).

Layout (``root``): ``leftImg8bit/<split>/<city>/<name>_leftImg8bit.png`` with
``gtFine/<split>/<city>/<name>_gtFine_labelIds.png``. The label files hold the 34 Cityscapes
label ids; the 19 evaluated classes get train ids 0..18, every other id (void, license plate,
and classes not evaluated such as ``guard rail``) becomes the ignore index 255.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import DataError
from .base import DatasetInfo, lut_from_mapping

CLASS_NAMES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
               "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
               "bicycle")
PALETTE = ((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
           (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
           (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32))
# Cityscapes label id -> train id for the 19 evaluated classes (all other ids -> 255).
ID_TO_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
               26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"


def cityscapes_info() -> DatasetInfo:
    return DatasetInfo("cityscapes", CLASS_NAMES, PALETTE, id_to_train=lut_from_mapping(ID_TO_TRAIN))


def cityscapes_pairs(root: str | Path, split: str) -> list:
    """Every ``*_leftImg8bit.png`` of ``leftImg8bit/<split>/*/`` with its expected ``labelIds`` file."""
    root = Path(root)
    img_dir = root / "leftImg8bit" / split
    if not img_dir.is_dir():
        raise DataError(f"{img_dir}: folder not found; cityscapes expects <root>/leftImg8bit/<split>/<city>/ and "
                        f"<root>/gtFine/<split>/<city>/ (split: train, val or test)")
    pairs = []
    for img in sorted(img_dir.glob(f"*/*{IMAGE_SUFFIX}")):
        name = img.name[: -len(IMAGE_SUFFIX)]
        pairs.append((img, root / "gtFine" / split / img.parent.name / f"{name}{LABEL_SUFFIX}"))
    return pairs
