"""Small ``folder`` datasets for the training tests: ``<root>/<split>/{images,labels}/NNN.png``.

Images are random RGB; the label of a pixel is a function of one colour channel (so a model can
learn it), with an optional pattern of ignored (255) pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Sequence

import numpy as np
from PIL import Image

Ignore = Literal["none", "top_band", "random_rows", "random_cols"]


def make_folder_dataset(root: Path, *, splits: Sequence[str] = ("train",), n: int = 6, size=(48, 64),
                        classes: int = 3, seed: int = 0, channel: int = 0, ignore: Ignore = "none") -> Path:
    """``ignore``: ``top_band`` = the top sixth of every label; ``random_rows`` / ``random_cols`` = a
    band of random height from the top / random width from the left, so images differ widely in
    how many pixels count."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for sub in ("images", "labels"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            label = (img[..., channel].astype(np.int64) * classes // 256).astype(np.uint8)
            if ignore == "top_band":
                label[: size[0] // 6] = 255
            elif ignore == "random_rows":
                label[: rng.integers(0, size[0] * 9 // 10)] = 255
            elif ignore == "random_cols":
                label[:, : rng.integers(0, size[1] * 9 // 10)] = 255
            Image.fromarray(img).save(root / split / "images" / f"{i:03d}.png")
            Image.fromarray(label).save(root / split / "labels" / f"{i:03d}.png")
    return root
