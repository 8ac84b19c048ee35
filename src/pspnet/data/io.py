"""Reading images and label maps deliberately: any PIL mode, EXIF orientation, 16-bit, palettes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError

Image.MAX_IMAGE_PIXELS = 20_000 * 20_000  # huge but bounded: refuse decompression bombs beyond this


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as uint8 H x W x 3 RGB.

    EXIF orientation is applied (photos from phones). Grey (L, I;16, I, F) is replicated to RGB,
    16-bit values are scaled to 8 bit, palette images are expanded, alpha is dropped.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im.load()
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot decode image ({e}); is the file truncated or not an image?") from None
    if im.width == 0 or im.height == 0:
        raise DataError(f"{path}: image has zero size")
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if im.mode != "RGB":
        im = im.convert("RGBA").convert("RGB") if im.mode in ("P", "PA", "LA") else im.convert("RGB")
    return np.asarray(im, dtype=np.uint8).copy()


def read_label(path: str | Path) -> np.ndarray:
    """Read a label map as integer H x W, without any resampling or colour conversion.

    Index images (L, P: the palette indices are the labels, as in VOC; I;16) come back as-is.
    RGB images come back as H x W x 3 for a dataset to decode through its palette.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
    except FileNotFoundError:
        raise DataError(f"{path}: label file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot decode label image ({e}); is the file truncated?") from None
    if im.mode in ("L", "P"):
        return np.asarray(im, dtype=np.uint8).copy()
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        return np.asarray(im).astype(np.int32)
    if im.mode in ("RGB", "RGBA"):
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    if im.mode == "LA":
        return np.asarray(im.getchannel(0), dtype=np.uint8).copy()
    raise DataError(f"{path}: unsupported label image mode {im.mode!r}; expected an 8/16-bit index PNG")
