"""Label maps in colour, for display (the default palette: :func:`pspnet.labels.default_palette`)."""

from __future__ import annotations

import numpy as np

from ..labels import IGNORE_INDEX


def colorize(label: np.ndarray, palette, ignore_index: int = IGNORE_INDEX, ignore_color=(0, 0, 0)) -> np.ndarray:
    """H x W class indices -> H x W x 3 uint8 colours (ignore and out-of-range -> ``ignore_color``)."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:] = ignore_color
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return lut[np.clip(label, 0, 255).astype(np.uint8)]
