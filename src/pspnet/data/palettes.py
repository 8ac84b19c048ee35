"""Colour palettes for displaying label maps."""

from __future__ import annotations

import numpy as np


def default_palette(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """The PASCAL VOC bit-interleaving palette, extended to any number of classes."""
    out = []
    for i in range(num_classes):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append((r, g, b))
    return tuple(out)


def colorize(label: np.ndarray, palette, ignore_index: int = 255, ignore_color=(0, 0, 0)) -> np.ndarray:
    """H x W class indices -> H x W x 3 uint8 colours (ignore and out-of-range -> ``ignore_color``)."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:] = ignore_color
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return lut[np.clip(label, 0, 255).astype(np.uint8)]
