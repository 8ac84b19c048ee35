"""Conventions of label maps shared by the model, the data and the tools: the ignore index and the
default palette.

255 is the original release's ignore label (``tool/train.py``: ``ignore_label: 255``): 8-bit label
files keep it, the named datasets map their void classes to it, the augmentation pads with it, and
the loss and the metrics skip it.
"""

from __future__ import annotations

__all__ = ["IGNORE_INDEX", "default_palette"]

IGNORE_INDEX = 255


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
