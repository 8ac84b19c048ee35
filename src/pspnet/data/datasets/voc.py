"""PASCAL VOC 2012 (Everingham et al. 2010), 21 classes, and the SBD-augmented training set
(Hariharan et al. 2011) used by the PSPNet paper (Sec. 5.2).

``voc``: ``root`` is the ``VOC2012`` folder (or a parent holding ``VOCdevkit/VOC2012`` or
``VOC2012``): ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` (palette PNGs whose
indices are the classes, 255 on object borders = ignore) and ``ImageSets/Segmentation/<split>.txt``.

``voc_aug``: ``root`` holds the VOC2012 folder as above and SBD's ``dataset`` folder as
``<root>/SBD`` or ``<root>/benchmark_RELEASE/dataset`` (``cls/<id>.mat``, ``img/<id>.jpg``,
``train.txt``, ``val.txt``). Split ``train_aug`` is ``<root>/train_aug.txt`` when present,
otherwise the usual 10,582 ids: SBD train + SBD val + VOC train, minus VOC val. Split ``val``
is VOC val. For each id the VOC annotation is used when it exists (it has the 255 borders),
else the SBD ``GTcls.Segmentation`` of ``cls/<id>.mat``.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import DataError
from ...labels import default_palette
from .base import DatasetInfo, split_stems

CLASS_NAMES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")


def voc_info() -> DatasetInfo:
    # the VOC palette is the bit-interleaving palette; label PNG indices are already train ids
    return DatasetInfo("voc", CLASS_NAMES, default_palette(len(CLASS_NAMES)))


def voc_aug_info() -> DatasetInfo:
    return DatasetInfo("voc_aug", CLASS_NAMES, default_palette(len(CLASS_NAMES)))


def find_voc_root(root: Path) -> Path:
    for cand in (root, root / "VOCdevkit" / "VOC2012", root / "VOC2012"):
        if (cand / "JPEGImages").is_dir():
            return cand
    raise DataError(f"{root}: no VOC2012 folder found (looked for JPEGImages/ in {root}, "
                    f"{root / 'VOCdevkit' / 'VOC2012'} and {root / 'VOC2012'})")


def find_sbd_root(root: Path) -> Path:
    for cand in (root / "SBD", root / "benchmark_RELEASE" / "dataset", root / "dataset", root):
        if (cand / "cls").is_dir():
            return cand
    raise DataError(f"{root}: no SBD folder found (looked for cls/ in {root / 'SBD'}, "
                    f"{root / 'benchmark_RELEASE' / 'dataset'} and {root})")


def _read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: split file not found")
    return [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def voc_pairs(root: str | Path, split: str) -> list:
    """``ImageSets/Segmentation/<split>.txt`` ids -> (JPEGImages/<id>.jpg, SegmentationClass/<id>.png)."""
    voc = find_voc_root(Path(root))
    ids = _read_ids(voc / "ImageSets" / "Segmentation" / f"{split}.txt")
    return [(voc / "JPEGImages" / f"{i}.jpg", voc / "SegmentationClass" / f"{i}.png") for i in ids]


def train_aug_ids(root: Path, voc: Path, sbd: Path) -> list[str]:
    listed = split_stems(root, "train_aug")
    if listed is not None:
        return listed
    val = set(_read_ids(voc / "ImageSets" / "Segmentation" / "val.txt"))
    ids = _read_ids(sbd / "train.txt") + _read_ids(sbd / "val.txt") + \
        _read_ids(voc / "ImageSets" / "Segmentation" / "train.txt")
    return sorted(set(ids) - val)


def voc_aug_pairs(root: str | Path, split: str) -> list:
    """``train_aug`` (VOC + SBD labels) or ``val`` (VOC val)."""
    root = Path(root)
    voc = find_voc_root(root)
    if split == "val":
        return voc_pairs(voc, "val")
    if split != "train_aug":
        raise DataError(f"voc_aug: unknown split {split!r}; choose 'train_aug' or 'val' (or use dataset 'voc')")
    sbd = find_sbd_root(root)
    pairs = []
    for i in train_aug_ids(root, voc, sbd):
        img = voc / "JPEGImages" / f"{i}.jpg"
        if not img.is_file() and (sbd / "img" / f"{i}.jpg").is_file():
            img = sbd / "img" / f"{i}.jpg"
        lbl = voc / "SegmentationClass" / f"{i}.png"
        if not lbl.is_file():
            lbl = sbd / "cls" / f"{i}.mat"
        pairs.append((img, lbl))
    return pairs
