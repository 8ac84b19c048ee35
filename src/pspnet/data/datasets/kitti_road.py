"""KITTI road (Fritsch et al. 2013): road / not road from the colour-coded ``gt_image_2`` labels.

Layout (``root``): ``training/image_2/<cat>_<n>.png`` with ``training/gt_image_2/<cat>_road_<n>.png``
(cat: um, umm, uu). Only the ``*_road_*`` ground truth is used (``um_lane_*`` is a different task).
Colours: magenta (255, 0, 255) road -> 1, red (255, 0, 0) not road -> 0, black (0, 0, 0)
unlabelled -> ignore 255; any other colour is an error. Split ``train`` (or ``training``) is every
labelled training image; ``test`` (``testing``) lists ``testing/image_2`` without labels; any other
split reads ``<root>/<split>.txt`` (first field of each line: an image name) from the training images.
"""

from __future__ import annotations

import re
from pathlib import Path

from ...errors import DataError
from ...labels import IGNORE_INDEX
from .base import DatasetInfo, stems_of_split

CLASS_NAMES = ("not_road", "road")
PALETTE = ((255, 0, 0), (255, 0, 255))
COLOR_TO_TRAIN = {(255, 0, 0): 0, (255, 0, 255): 1, (0, 0, 0): IGNORE_INDEX}

_GT_NAME = re.compile(r"^(?P<cat>[a-z]+)_road_(?P<num>\d+)$")


def kitti_road_info() -> DatasetInfo:
    return DatasetInfo("kitti_road", CLASS_NAMES, PALETTE, color_to_train=COLOR_TO_TRAIN)


def kitti_road_pairs(root: str | Path, split: str) -> list:
    """Image ``<cat>_<n>.png`` for each ground truth ``<cat>_road_<n>.png``."""
    root = Path(root)
    if split in ("test", "testing"):
        img_dir = root / "testing" / "image_2"
        if not img_dir.is_dir():
            raise DataError(f"{img_dir}: folder not found (kitti_road test images)")
        return [(p, None) for p in sorted(img_dir.glob("*.png"))]
    gt_dir, img_dir = root / "training" / "gt_image_2", root / "training" / "image_2"
    if not gt_dir.is_dir():
        raise DataError(f"{gt_dir}: folder not found; kitti_road expects <root>/training/image_2/um_000000.png "
                        f"and <root>/training/gt_image_2/um_road_000000.png")
    pairs = {}
    for gt in sorted(gt_dir.glob("*.png")):
        m = _GT_NAME.match(gt.stem)
        if m:  # skip um_lane_* and anything else
            name = f"{m['cat']}_{m['num']}"
            pairs[name] = (img_dir / f"{name}.png", gt)
    if split in ("train", "training"):
        return [pairs[k] for k in sorted(pairs)]
    stems = stems_of_split(
        root, split, pairs,
        f"kitti_road: unknown split {split!r}; use 'train', 'test' or add {root / (split + '.txt')} "
        f"listing training image names",
        f"road ground truth in {gt_dir}")
    return [pairs[s] for s in stems]
