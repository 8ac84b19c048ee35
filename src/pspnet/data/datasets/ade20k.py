"""ADE20K SceneParsing (Zhou et al. 2017), 150 classes: the ImageNet scene parsing challenge 2016 of
the PSPNet paper (Sec. 5.1).

Layout (``root`` = the ``ADEChallengeData2016`` folder, or its parent):
``images/{training,validation}/*.jpg`` with ``annotations/{training,validation}/*.png``.
Annotation value 0 is "other objects" and becomes the ignore index 255; values 1..150 shift down
by one to train ids 0..149. Values above 150 do not exist in the release; they map to 150..254,
which the dataset's range check reports as errors instead of hiding them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import DataError
from ...labels import IGNORE_INDEX, default_palette
from .base import DatasetInfo

CLASS_NAMES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
)

SPLITS = {"train": "training", "training": "training", "val": "validation", "validation": "validation"}


def ade20k_info() -> DatasetInfo:
    lut = np.arange(-1, 255, dtype=np.int64)  # k -> k - 1
    lut[0] = IGNORE_INDEX  # "other objects"
    return DatasetInfo("ade20k", CLASS_NAMES, default_palette(len(CLASS_NAMES)), id_to_train=lut.astype(np.uint8))


def ade20k_pairs(root: str | Path, split: str) -> list:
    """``images/<training|validation>/*.jpg`` with ``annotations/<...>/<stem>.png``."""
    root = Path(root)
    if not (root / "images").is_dir() and (root / "ADEChallengeData2016" / "images").is_dir():
        root = root / "ADEChallengeData2016"
    if split not in SPLITS:
        raise DataError(f"ade20k: unknown split {split!r}; choose one of {sorted(SPLITS)}")
    sub = SPLITS[split]
    img_dir = root / "images" / sub
    if not img_dir.is_dir():
        raise DataError(f"{img_dir}: folder not found; ade20k expects <root>/images/{sub}/*.jpg and "
                        f"<root>/annotations/{sub}/*.png (root: the ADEChallengeData2016 folder)")
    return [(img, root / "annotations" / sub / f"{img.stem}.png") for img in sorted(img_dir.glob("*.jpg"))]
