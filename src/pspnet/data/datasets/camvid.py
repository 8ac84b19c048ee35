"""CamVid (Brostow et al. 2009) in the 11-class SegNet layout, and the original 32-class colour labels.

SegNet layout (``../shared/data/camvid``): ``train.txt``/``val.txt``/``test.txt`` list files of
``image label`` lines; labels are 8-bit indices 0..10 and 11 = void, mapped to ignore (255).
The original 32-class colour-coded labels (``LabeledApproved_full``) are mapped to the same 11
classes through the standard grouping used by SegNet.
"""

from __future__ import annotations

from pathlib import Path

from .base import DatasetInfo, lut_from_mapping, read_list_file

CLASS_NAMES = ("sky", "building", "pole", "road", "sidewalk", "tree", "sign", "fence", "car", "pedestrian",
               "bicyclist")
PALETTE = ((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (0, 0, 192), (128, 128, 0),
           (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192))

# The 32 original CamVid colours, grouped into the 11 SegNet classes (255: void / ignored).
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
    (0, 0, 0): 255,                                       # Void
}


def camvid_info() -> DatasetInfo:
    return DatasetInfo("camvid", CLASS_NAMES, PALETTE, id_to_train=lut_from_mapping({i: i for i in range(11)}),
                       color_to_train=COLOR_32_TO_11)


def camvid_pairs(root: str | Path, split: str) -> list:
    """Pairs of the SegNet layout: ``<root>/<split>.txt`` list file (relative paths)."""
    root = Path(root)
    return read_list_file(root / f"{split}.txt", root)
