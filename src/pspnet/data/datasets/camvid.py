"""CamVid (Brostow et al. 2009) in the 11-class SegNet layout, and the original 32-class colour labels.

SegNet layout (``../shared/data/camvid``): ``train.txt``/``val.txt``/``test.txt`` list files of
``image label`` lines; labels are 8-bit indices 0..10 and 11 = void, mapped to ignore (255).
The original 32-class colour-coded labels (``LabeledApproved_full``) are mapped to the same 11
classes through the grouping below (dataset ``camvid32``). SegNet did not publish its conversion;
this grouping follows the class names (e.g. lane markings -> road, SUV/truck/bus -> car) and is
documented, not guaranteed to reproduce the SegNet label files pixel for pixel.

``camvid32`` layout (``root``): ``701_StillsRaw_full/<name>.png`` images with
``LabeledApproved_full/<name>_L.png`` colour labels. Split ``all`` is every image; any other
split reads ``<root>/<split>.txt`` and keeps the images whose name is the first field's file stem
(so the SegNet ``train.txt``/``val.txt``/``test.txt`` lists select the same frames).
"""

from __future__ import annotations

from pathlib import Path

from ...errors import DataError
from ...labels import IGNORE_INDEX
from .base import DatasetInfo, lut_from_mapping, read_list_file, stems_of_split

CLASS_NAMES = ("sky", "building", "pole", "road", "sidewalk", "tree", "sign", "fence", "car", "pedestrian",
               "bicyclist")
PALETTE = ((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (0, 0, 192), (128, 128, 0),
           (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192))

# The 32 original CamVid colours, grouped into the 11 SegNet classes (void: ignored).
COLOR_32_TO_11: dict[tuple[int, int, int], int] = {
    (128, 128, 128): 0,                                   # Sky
    (0, 128, 64): 1, (128, 0, 0): 1, (64, 192, 0): 1,     # Bridge, Building, Wall
    (64, 0, 64): 1, (192, 0, 128): 1,                     # Tunnel, Archway
    (192, 192, 128): 2, (0, 0, 64): 2,                    # Column_Pole, TrafficCone
    (128, 64, 128): 3, (128, 0, 192): 3, (192, 0, 64): 3,  # Road, LaneMkgsDriv, LaneMkgsNonDriv
    (0, 0, 192): 4, (64, 192, 128): 4, (128, 128, 192): 4,  # Sidewalk, ParkingBlock, RoadShoulder
    (128, 128, 0): 5, (192, 192, 0): 5,                   # Tree, VegetationMisc
    (192, 128, 128): 6, (128, 128, 64): 6, (0, 64, 64): 6,  # SignSymbol, Misc_Text, TrafficLight
    (64, 64, 128): 7,                                     # Fence
    (64, 0, 128): 8, (64, 128, 192): 8, (192, 128, 192): 8,  # Car, SUVPickupTruck, Truck_Bus
    (192, 64, 128): 8, (128, 64, 64): 8,                  # Train, OtherMoving
    (64, 64, 0): 9, (192, 128, 64): 9, (64, 0, 192): 9,   # Pedestrian, Child, CartLuggagePram
    (64, 128, 64): 9,                                     # Animal
    (0, 128, 192): 10, (192, 0, 192): 10,                 # Bicyclist, MotorcycleScooter
    (0, 0, 0): IGNORE_INDEX,                              # Void
}


def camvid_info() -> DatasetInfo:
    return DatasetInfo("camvid", CLASS_NAMES, PALETTE, id_to_train=lut_from_mapping({i: i for i in range(11)}),
                       color_to_train=COLOR_32_TO_11)


def camvid_pairs(root: str | Path, split: str) -> list:
    """Pairs of the SegNet layout: ``<root>/<split>.txt`` list file (relative paths)."""
    root = Path(root)
    return read_list_file(root / f"{split}.txt", root)


IMAGES_32 = "701_StillsRaw_full"
LABELS_32 = "LabeledApproved_full"


def camvid32_info() -> DatasetInfo:
    return DatasetInfo("camvid32", CLASS_NAMES, PALETTE, color_to_train=COLOR_32_TO_11)


def camvid32_pairs(root: str | Path, split: str) -> list:
    """Pairs of the original layout: ``701_StillsRaw_full/<n>.png`` + ``LabeledApproved_full/<n>_L.png``."""
    root = Path(root)
    img_dir = root / IMAGES_32
    if not img_dir.is_dir():
        raise DataError(f"{img_dir}: folder not found; camvid32 expects <root>/{IMAGES_32}/*.png and "
                        f"<root>/{LABELS_32}/*_L.png")
    images = {p.stem: p for p in sorted(img_dir.iterdir()) if p.suffix.lower() == ".png"}
    if split == "all":
        stems = sorted(images)
    else:
        stems = stems_of_split(
            root, split, images,
            f"camvid32: no split file {root / (split + '.txt')}; use split 'all' or add a list "
            f"of image names (the SegNet train.txt/val.txt/test.txt work)",
            f"image in {img_dir}")
    return [(images[s], root / LABELS_32 / f"{s}_L.png") for s in stems]
