"""Training curves and prediction grids as PNG files (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .files import write_output  # noqa: E402


def plot_training_curves(history: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Loss (and its main/aux parts) per iteration, and val mIoU, side by side.

    A run without validation (``data.val_split=null``, e.g. train+val) gets the loss panel alone,
    not an empty validation panel that reads like a failed one."""
    train = [r for r in history if r.get("kind") == "train"]
    val = [r for r in history if r.get("kind") == "val"]
    fig, axes = plt.subplots(1, 2 if val else 1, figsize=(11 if val else 6, 4), squeeze=False)
    axes = axes[0]
    ax = axes[0]
    if train:
        its = [r["iter"] for r in train]
        ax.plot(its, [r["loss"] for r in train], label="total", lw=1.2)
        for part in ("loss_main", "loss_aux"):
            if part in train[0]:
                ax.plot(its, [r[part] for r in train], label=part.split("_")[1], lw=0.8, alpha=0.7)
    ax.set(xlabel="iteration", ylabel="loss", title="training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    if val:
        ax = axes[1]
        ax.plot([r["iter"] for r in val], [r["mIoU"] for r in val], "o-", label="val mIoU")
        ax.plot([r["iter"] for r in val], [r["allAcc"] for r in val], "s--", label="val allAcc", alpha=0.7)
        ax.set_ylim(0, 1)
        ax.legend()
        ax.set(xlabel="iteration", title="validation")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    try:  # atomically, in the format the name asks for (the temporary name ends in .tmp)
        write_output(path, lambda tmp: fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".").lower() or "png"))
    finally:
        plt.close(fig)
    return path


def plot_prediction_grid(rows: Sequence[tuple[Any, Any, Any]], palette: Sequence[Sequence[int]],
                         class_names: Sequence[str], path: str | Path, ignore_index: int = 255,
                         title: str | None = None) -> Path:
    """One row per image: the image, its ground truth and the prediction (palette colours, ignore black)."""
    import numpy as np
    from matplotlib.patches import Patch

    from .data.palettes import colorize
    fig, axes = plt.subplots(len(rows), 3, figsize=(12, 3.1 * len(rows) + 0.8), squeeze=False)
    for r, (image, gt, pred) in enumerate(rows):
        panels = (np.asarray(image), colorize(np.asarray(gt), palette, ignore_index),
                  colorize(np.asarray(pred), palette, ignore_index))
        for c, (panel, name) in enumerate(zip(panels, ("image", "ground truth", "prediction"))):
            axes[r, c].imshow(panel, interpolation="nearest")  # exact palette colours
            axes[r, c].set_axis_off()
            if r == 0:
                axes[r, c].set_title(name)
    handles = [Patch(color=np.asarray(palette[i]) / 255, label=n) for i, n in enumerate(class_names)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=9, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06 if len(rows) > 2 else 0.12, 1, 0.97 if title else 1))
    path = Path(path)
    try:  # atomically, in the format the name asks for (the temporary name ends in .tmp)
        write_output(path, lambda tmp: fig.savefig(tmp, dpi=90, format=path.suffix.lstrip(".").lower() or "png"))
    finally:
        plt.close(fig)
    return path
