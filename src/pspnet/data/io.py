"""Reading images and label maps deliberately: any PIL mode, EXIF orientation, 16-bit, palettes, SBD ``.mat``.

Decisions (see docs/data.md, "Image modes"):

* Images always come back as uint8 H x W x 3 RGB. Grey (L, 1) is replicated, palette images
  (P, PA) are expanded through their palette, alpha (LA, RGBA, PA) is dropped (not composited:
  the colour under a transparent pixel is kept), CMYK/YCbCr are converted by PIL. 16-bit grey
  (I;16) and 32-bit int (I) are scaled from 0..65535 to 0..255; PIL itself reduces 16-bit RGB(A)
  PNGs to 8 bit by their high byte. Float (F) images are taken as 0..1 when their maximum is
  at most 1, else as 0..255.
* EXIF orientation is applied to images *and* labels (a lossless transpose), because annotation
  tools show the photo upright and the label is drawn on that view. When a label only fits the
  un-rotated image, :func:`exif_orientation` lets the caller say so in its error.
* Labels are never converted or resampled: index images (L, P, I;16) come back as their indices,
  colour-coded labels as H x W x 3 RGB for the dataset to decode through its palette.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError

MAX_PIXELS = 20_000 * 20_000  # huge but bounded: larger images are refused as possible decompression bombs

_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)
_EXIF_ORIENTATION = 0x0112


@contextmanager
def _pil_pixel_limit(limit: int):
    """PIL's decompression-bomb limit raised to ours while one file is opened, and restored after:
    importing pspnet leaves PIL's setting alone, and our own check below names the file."""
    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max(limit, before or 0)
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = before


def _open(path: Path | IO[bytes], what: str, transpose: bool = True, *, name: str | None = None,
          max_pixels: int = MAX_PIXELS) -> Image.Image:
    """``path`` (or an open binary file, named ``name`` in messages) decoded, refused over ``max_pixels``."""
    label = name or path
    try:
        with warnings.catch_warnings(), _pil_pixel_limit(max_pixels):
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, before decoding
            with Image.open(path) as im:
                if im.width * im.height > max_pixels:
                    raise DataError(f"{label}: {what} is {im.width}x{im.height} = {im.width * im.height:,} pixels, "
                                    f"over the limit of {max_pixels:,} (a possible decompression bomb); "
                                    f"downscale or tile it first")
                im.load()
                frames = getattr(im, "n_frames", 1)
                out = ImageOps.exif_transpose(im) if transpose else im.copy()
                if frames > 1:  # an animated GIF/PNG/WebP, a multi-page TIFF: say only one frame is used
                    logging.getLogger("pspnet.data").warning(
                        "%s: has %d frames; only the first is used (for a video, give an .mp4 or split the frames "
                        "into images)", label, frames)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{label}: {what} file not found") from None
    except IsADirectoryError:
        raise DataError(f"{label}: expected a {what} file, found a directory") from None
    except _DECODE_ERRORS as e:
        empty = " (the file is empty)" if isinstance(path, Path) and path.is_file() and path.stat().st_size == 0 else ""
        raise DataError(f"{label}: cannot decode {what}{empty} ({e}); is the file truncated or not an image?") from None
    except Exception as e:  # noqa: BLE001 - decoders raise many types on hostile bytes (struct.error, ...)
        raise DataError(f"{label}: cannot decode {what} ({type(e).__name__}: {e}); is the file corrupt?") from None
    if out.width == 0 or out.height == 0:
        raise DataError(f"{label}: {what} has zero size")
    return out


def exif_orientation(path: str | Path) -> int:
    """The EXIF orientation tag of an image file (1 = upright, 5..8 = rotated by 90 degrees); 1 if absent."""
    try:
        with Image.open(path) as im:
            return int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:  # noqa: BLE001 - a hint only; the real read reports real errors
        return 1


def image_size(path: str | Path) -> tuple[int, int] | None:
    """``(height, width)`` from the image file's header, without decoding a pixel (None where the header
    cannot be read: :func:`read_image` then names the problem). What a memory estimate starts from."""
    try:
        with warnings.catch_warnings(), _pil_pixel_limit(MAX_PIXELS):  # read_image's limit, not PIL's smaller one
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                return im.height, im.width
    except Exception:  # noqa: BLE001 - any unreadable header: read_image reports it
        return None


def read_image(path: str | Path | IO[bytes], *, name: str | None = None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image as uint8 H x W x 3 RGB, upright according to its EXIF orientation.

    ``path`` may also be an open binary file (an upload's bytes in ``io.BytesIO``), called ``name`` in
    messages; an image of more than ``max_pixels`` pixels is refused from its header, before decoding."""
    path = Path(path) if isinstance(path, str | Path) else path
    return image_array(_open(path, "image", name=name, max_pixels=max_pixels), name or path)


def image_array(im: Image.Image, name: str | Path = "image") -> np.ndarray:
    """A decoded PIL image of any mode as uint8 H x W x 3 RGB (the conversions of the module docstring)."""
    path = name
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise DataError(f"{path}: float image has {int((~np.isfinite(arr)).sum())} NaN/inf pixel values")
        if mode == "F":
            hi = 1.0 if arr.max(initial=0.0) <= 1.0 else 255.0
        else:
            hi = 65535.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if mode != "RGB":
        try:
            im = im.convert("RGBA").convert("RGB") if mode in ("P", "PA") else im.convert("RGB")
        except (ValueError, OSError) as e:
            raise DataError(f"{path}: cannot convert image mode {mode!r} to RGB ({e}); save it as RGB") from None
    return np.asarray(im, dtype=np.uint8).copy()


def read_mat_label(path: str | Path) -> np.ndarray:
    """The class map of an SBD (Hariharan et al. 2011) ``cls/*.mat`` file: ``GTcls.Segmentation``."""
    path = Path(path)
    from scipy.io import loadmat
    try:
        mat = loadmat(path, squeeze_me=True, struct_as_record=False)
    except FileNotFoundError:
        raise DataError(f"{path}: label file not found") from None
    except Exception as e:  # noqa: BLE001 - scipy raises many types for broken files
        raise DataError(f"{path}: cannot read MATLAB label file ({type(e).__name__}: {e})") from None
    gt = mat.get("GTcls")
    seg = getattr(gt, "Segmentation", None)
    if seg is None:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise DataError(f"{path}: expected an SBD class label with variable GTcls.Segmentation, found "
                        f"variables {keys}")
    seg = np.asarray(seg)
    if seg.ndim != 2 or seg.size == 0:
        raise DataError(f"{path}: GTcls.Segmentation has shape {seg.shape}, expected a 2-D class map")
    if seg.min(initial=0) < 0 or seg.max(initial=0) > 255:
        raise DataError(f"{path}: GTcls.Segmentation holds values outside 0..255 "
                        f"({int(seg.min())}..{int(seg.max())})")
    return seg.astype(np.uint8)


def read_label(path: str | Path, palette_to_rgb: bool = False) -> np.ndarray:
    """Read a label map as integer H x W, without any resampling.

    Index images (L, P: the palette indices are the labels, as in VOC; 1: 0/1; I;16: int32) come
    back as-is; RGB(A) images come back as H x W x 3 for a dataset to decode through its palette.
    With ``palette_to_rgb`` (colour-coded datasets) a P image is expanded to the colours its palette
    shows instead. ``.mat`` files are SBD class labels.
    """
    path = Path(path)
    if path.suffix.lower() == ".mat":
        return read_mat_label(path)
    im = _open(path, "label")
    mode = im.mode
    if mode in ("P", "PA") and palette_to_rgb:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    if mode in ("L", "P"):
        return np.asarray(im, dtype=np.uint8).copy()
    if mode == "1":
        return np.asarray(im, dtype=np.uint8).copy()
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        return np.asarray(im).astype(np.int32)
    if mode in ("RGB", "RGBA"):
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    if mode in ("LA", "PA"):
        return np.asarray(im.getchannel(0), dtype=np.uint8).copy()
    raise DataError(f"{path}: unsupported label image mode {mode!r}; expected an 8/16-bit index PNG "
                    f"(L, P, I;16) or a colour-coded RGB PNG")
