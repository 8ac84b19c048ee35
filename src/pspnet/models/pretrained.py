"""The packaged pretrained model: a PSPNet-18 trained on CamVid (11 classes), shipped inside the
package as ``pspnet/weights/camvid_pspnet18.safetensors`` so ``pspnet predict`` works without
``--weights``. The file carries its config, class names and palette (``models/weights.py``).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import WeightsError

__all__ = ["DEFAULT_WEIGHTS_NAME", "PACKAGED", "default_weights_path"]

DEFAULT_WEIGHTS_NAME = "camvid_pspnet18.safetensors"
PACKAGED = "packaged"
"""``train.pretrained: packaged`` starts from this model wherever pspnet is installed."""


def _weights_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "weights"


def default_weights_path() -> Path:
    """Path of the packaged CamVid model; :class:`WeightsError` if this installation lacks it."""
    path = _weights_dir() / DEFAULT_WEIGHTS_NAME
    if not path.is_file():
        raise WeightsError(
            f"{path}: the packaged CamVid model is not installed in this copy of pspnet. Pass a weight file "
            f"with --weights (e.g. runs/<name>/final.safetensors from 'pspnet train', or a file made with "
            f"'pspnet convert'), or install a pspnet release that ships {DEFAULT_WEIGHTS_NAME}.")
    return path

