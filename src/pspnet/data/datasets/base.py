"""A segmentation dataset is a list of (image, label) file pairs plus the dataset's label semantics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ...errors import DataError
from ...labels import IGNORE_INDEX
from ..io import exif_orientation, read_image, read_label
from ..transforms import Transform, identity_transform, to_tensors


@dataclass
class DatasetInfo:
    """Class names, display palette and the mapping from raw label files to train ids."""

    name: str
    class_names: Sequence[str]
    palette: Sequence[tuple[int, int, int]]
    ignore_index: int = IGNORE_INDEX
    # raw id -> train id lookup table (len 256 or 65536); None = labels are already train ids.
    id_to_train: np.ndarray | None = None
    # colour-coded label files: RGB colour -> train id (unknown colours are an error).
    color_to_train: dict[tuple[int, int, int], int] | None = field(default=None, repr=False)
    # the user's data.label_map that built id_to_train (own data), kept for the messages that name it
    label_map: dict | None = field(default=None, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def color_coded(self) -> bool:
        """Label files are colour images (palette PNGs are expanded to their colours before decoding)."""
        return self.color_to_train is not None and self.id_to_train is None


def with_ignore_index(info: DatasetInfo, ignore_index: int) -> DatasetInfo:
    """``info`` whose labels mark unlabelled pixels ``ignore_index`` instead of the dataset's own value.

    The named datasets' label tables (and VOC's raw object borders) use 255, as the original release
    does; a run that sets another ignore index gets it from the labels too, so the augmentation's
    padding, the loss and the metrics all see one value.
    """
    if ignore_index == info.ignore_index:
        return info
    if 0 <= ignore_index < info.num_classes:
        raise DataError(f"ignore index {ignore_index} is a class of {info.name} (0..{info.num_classes - 1}); "
                        f"choose a value outside the classes, e.g. {IGNORE_INDEX}")
    void = info.ignore_index
    colors = info.color_to_train and {c: ignore_index if t == void else t for c, t in info.color_to_train.items()}
    table = info.id_to_train
    if table is None and colors is None:  # label files hold train ids and the dataset's ignore value
        table = np.arange(256, dtype=np.uint8)
    lut = None
    if table is not None:
        lut = table.astype(np.uint8 if ignore_index < 256 else np.int32)
        lut[table == void] = ignore_index
    return replace(info, ignore_index=ignore_index, id_to_train=lut, color_to_train=colors)


def decode_color_label(rgb: np.ndarray, color_to_train: dict[tuple[int, int, int], int], path: Path,
                       ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Map an H x W x 3 colour-coded label to train ids; an unknown colour names the file and a pixel."""
    code = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    colours, inverse = np.unique(code, return_inverse=True)
    lut = np.full(len(colours), -1, dtype=np.int64)
    for i, c in enumerate(colours):
        lut[i] = color_to_train.get((int(c >> 16), int((c >> 8) & 255), int(c & 255)), -1)
    bad = np.flatnonzero(lut < 0)
    if bad.size:
        c = int(colours[bad[0]])
        ys, xs = np.nonzero(code == c)
        raise DataError(f"{path}: unknown label colour RGB{(c >> 16, (c >> 8) & 255, c & 255)} at pixel "
                        f"(x={xs[0]}, y={ys[0]}); it is not in this dataset's palette")
    return lut[inverse.reshape(code.shape)].astype(np.uint8 if ignore_index < 256 else np.int32)


def map_label(raw: np.ndarray, info: DatasetInfo, path: Path) -> np.ndarray:
    """Raw label file contents -> train ids in [0, num_classes) or the ignore index."""
    if raw.ndim == 3:
        if info.color_to_train is None:
            raise DataError(f"{path}: label is a colour (RGB) image but {info.name} expects single-channel "
                            f"class indices; convert it to an 8-bit index PNG (mode L or P)")
        return decode_color_label(raw, info.color_to_train, path, info.ignore_index)
    if raw.size and raw.min() < 0:  # 32-bit label images can hold negative values; never index with them
        raise DataError(f"{path}: label value {int(raw.min())} is negative; label files hold class indices >= 0")
    if info.id_to_train is not None:
        if raw.max(initial=0) >= len(info.id_to_train):
            raise DataError(f"{path}: label value {int(raw.max())} is outside the id table of {info.name} "
                            f"(0..{len(info.id_to_train) - 1})")
        return info.id_to_train[raw]
    return raw


def read_mapped_label(path: Path, info: DatasetInfo) -> np.ndarray:
    """Read a label file and map it to train ids (values are not range-checked here)."""
    return map_label(read_label(path, palette_to_rgb=info.color_coded), info, path)


def size_mismatch_message(img_path: Path, lbl_path: Path, image_hw: tuple[int, int],
                          label_hw: tuple[int, int]) -> str:
    """The error text for an image/label size mismatch, with a hint when EXIF rotation explains it."""
    msg = (f"{lbl_path}: label is {label_hw[1]}x{label_hw[0]} but its image {img_path} is "
           f"{image_hw[1]}x{image_hw[0]} (width x height); they must match")
    orientation = exif_orientation(img_path)
    if orientation in (5, 6, 7, 8) and tuple(label_hw) == tuple(image_hw)[::-1]:
        msg += (f". The image has EXIF orientation {orientation} (rotated by 90 degrees) and is read upright; "
                f"the label fits the un-rotated pixels: draw the label on the upright image, or strip the EXIF tag "
                f"and rotate the image pixels consistently")
    return msg


class SegmentationDataset(Dataset):
    """Image/label pairs with a dataset's label mapping and an augmentation.

    Items are ``(image uint8 3xHxW, label int64 HxW)``; normalise batches with
    :func:`pspnet.data.transforms.normalize`. With ``check_labels`` every label value must be a
    class index or the ignore index, otherwise a :class:`DataError` names the file and value.
    """

    def __init__(self, pairs: Sequence[tuple[Path, Path | None]], info: DatasetInfo,
                 transform: Transform | None = None, check_labels: bool = True) -> None:
        if not pairs:
            raise DataError(f"{info.name}: the dataset is empty (no image/label pairs found)")
        self.pairs = [(Path(i), None if lbl is None else Path(lbl)) for i, lbl in pairs]
        self.info = info
        self.transform = transform or identity_transform
        self.check_labels = check_labels

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The decoded, mapped but not augmented (image, label) of one item."""
        img_path, lbl_path = self.pairs[index]
        image = read_image(img_path)
        if lbl_path is None:
            dtype = np.uint8 if self.info.ignore_index < 256 else np.int32
            return image, np.full(image.shape[:2], self.info.ignore_index, dtype)
        label = read_mapped_label(lbl_path, self.info)
        if label.shape[:2] != image.shape[:2]:
            raise DataError(size_mismatch_message(img_path, lbl_path, image.shape[:2], label.shape[:2]))
        if self.check_labels:
            bad = (label >= self.info.num_classes) & (label != self.info.ignore_index)
            if bad.any():
                ys, xs = np.nonzero(bad)
                raise DataError(f"{lbl_path}: label value {int(label[ys[0], xs[0]])} at pixel (x={xs[0]}, "
                                f"y={ys[0]}) is not a class of {self.info.name} (0..{self.info.num_classes - 1}) "
                                f"nor the ignore value {self.info.ignore_index}")
        return image, label.astype(np.uint8) if self.info.ignore_index < 256 else label

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.load(index)
        image, label = self.transform(image, label)
        return to_tensors(image, label)


def read_list_file(list_file: str | Path, root: str | Path | None = None) -> list[tuple[Path, Path | None]]:
    """Parse the original release's list format: one ``image [label]`` per line, relative to ``root``.

    Blank lines and lines starting with ``#`` are skipped. Paths may not contain spaces.
    """
    list_file = Path(list_file)
    root = Path(root) if root is not None else list_file.parent
    if not list_file.is_file():
        raise DataError(f"{list_file}: list file not found")
    try:
        text = list_file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{list_file}: not a UTF-8 text list file ({e})") from None
    except OSError as e:
        raise DataError(f"{list_file}: cannot read the list file ({e})") from None
    pairs: list[tuple[Path, Path | None]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) > 2:
            raise DataError(f"{list_file}:{lineno}: expected 'image_path [label_path]', got {len(parts)} fields: "
                            f"{line[:120]!r}")
        img = root / parts[0]
        lbl = root / parts[1] if len(parts) == 2 else None
        pairs.append((img, lbl))
    if not pairs:
        raise DataError(f"{list_file}: the list file has no entries")
    return pairs


IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

LABEL_DIRS = ("labels", "masks", "annotations")
"""The names a label folder goes by beside ``images`` (the ``folder`` dataset reads the first that exists)."""


def label_dir(folder: Path) -> Path:
    """``folder``'s label folder: the first of :data:`LABEL_DIRS` that exists (``labels`` when none does)."""
    return next((folder / n for n in LABEL_DIRS if (folder / n).is_dir()), folder / "labels")


def folder_pairs(images_dir: str | Path, labels_dir: str | Path, label_suffix: str = "",
                 strict: bool = True) -> list[tuple[Path, Path | None]]:
    """Match ``images_dir/<stem>.*`` with ``labels_dir/<stem><label_suffix>.png`` (or any image ext).

    With ``strict=False`` an image without a label is paired with the path its label should have
    (``<stem><label_suffix>.png``) so that ``pspnet data check`` can report every missing file.
    """
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    for d in (images_dir, labels_dir):
        if not d.is_dir():
            raise DataError(f"{d}: folder not found")
    labels = {}
    for p in sorted(labels_dir.iterdir()):
        if p.suffix.lower() in IMAGE_EXTS:
            stem = p.stem[: -len(label_suffix)] if label_suffix and p.stem.endswith(label_suffix) else p.stem
            labels[stem] = p
    pairs, missing = [], []
    for p in sorted(images_dir.iterdir()):
        if p.suffix.lower() not in IMAGE_EXTS:
            continue
        if p.stem in labels:
            pairs.append((p, labels[p.stem]))
        else:
            missing.append(p.name)
            if not strict:
                pairs.append((p, labels_dir / f"{p.stem}{label_suffix}.png"))
    if missing and strict:
        raise DataError(f"{labels_dir}: no label for {len(missing)} image(s) of {images_dir}, e.g. "
                        f"{missing[:3]}; labels are matched by file stem")
    return pairs


def require_files(pairs: Sequence[tuple[Path, Path | None]], what: str) -> None:
    """Fail fast, before training starts, when listed files do not exist (every one is counted)."""
    missing = [str(p) for pair in pairs for p in pair if p is not None and not p.is_file()]
    if missing:
        shown = "\n  ".join(missing[:10])
        more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise DataError(f"{what}: {len(missing)} of the listed files do not exist:\n  {shown}{more}\n"
                        f"run 'pspnet data check' for a full report")


def split_stems(root: Path, split: str) -> list[str] | None:
    """Stems named by ``<root>/<split>.txt`` (first field of each line: a name or a relative path), or None.

    Lets layouts without official splits (original CamVid, KITTI road) use split files such as the
    SegNet CamVid lists.
    """
    f = root / f"{split}.txt"
    if not f.is_file():
        return None
    stems = []
    for line in f.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            stems.append(Path(line.split()[0]).stem)
    if not stems:
        raise DataError(f"{f}: the split file has no entries")
    return stems


def stems_of_split(root: Path, split: str, available, no_split_file: str, missing_what: str) -> list[str]:
    """Stems of ``<root>/<split>.txt``, each required to be a key of ``available``.

    ``no_split_file`` is the error message when the split file does not exist; ``missing_what``
    completes "name(s) have no ..." for names without a file.
    """
    stems = split_stems(root, split)
    if stems is None:
        raise DataError(no_split_file)
    unknown = [s for s in stems if s not in available]
    if unknown:
        raise DataError(f"{root / (split + '.txt')}: {len(unknown)} name(s) have no {missing_what}, e.g. "
                        f"{unknown[:3]}")
    return stems


def lut_from_mapping(mapping: dict[int, int], size: int = 256, default: int = IGNORE_INDEX) -> np.ndarray:
    lut = np.full(size, default, dtype=np.uint8 if default < 256 else np.int32)
    for raw, train in mapping.items():
        lut[raw] = train
    return lut

