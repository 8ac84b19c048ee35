"""The packaged pretrained model: a PSPNet-18 trained on CamVid (11 classes), shipped inside the
package as ``pspnet/weights/camvid_pspnet18.safetensors`` so ``pspnet predict`` works without
``--weights``. The file carries its config, class names and palette (``models/weights.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import WeightsError

__all__ = ["DEFAULT_WEIGHTS_NAME", "default_weights_path", "load_default_model", "load_for_inference"]

DEFAULT_WEIGHTS_NAME = "camvid_pspnet18.safetensors"


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


def load_default_model(**config_overrides: Any):
    """``(model in eval mode, metadata)`` of the packaged CamVid model (see :func:`load_weights`)."""
    from .weights import load_weights
    return load_weights(default_weights_path(), **config_overrides)


def _has_config(path: Path) -> bool:
    """Whether a weight file carries its model config (safetensors: read from the header only)."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open
        try:
            with safe_open(str(path), framework="pt") as f:
                return "config" in (f.metadata() or {})
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise WeightsError(f"{path}: not a valid safetensors file ({e})") from None
    from .weights import read_state_dict
    return "config" in read_state_dict(path)[1]


def load_for_inference(weights: str | Path | None = None, config=None, device: str | None = None):
    """``(model in eval mode on device, metadata)`` for ``pspnet eval/predict/export``.

    ``weights=None`` is the packaged CamVid model. A file that carries its config (ours, our
    checkpoints) builds itself; a file without one (the original release) is built from
    ``config`` (a :class:`pspnet.config.Config`: its model section and dataset's class count).
    ``device``: ``cpu``, ``cuda``, ... (default: CUDA when available).
    """
    import torch

    from .pspnet import PSPNet, PSPNetConfig
    from .weights import load_into, load_weights, read_state_dict
    path = Path(weights) if weights is not None else default_weights_path()
    if not path.is_file():
        raise WeightsError(f"{path}: weight file not found")
    if _has_config(path):
        model, meta = load_weights(path)
    else:
        if config is None:
            raise WeightsError(f"{path}: the file carries no model config; pass --config with the model section it "
                               f"was trained with, or convert it first with 'pspnet convert'")
        from ..data.datasets import dataset_info
        num_classes = config.model.num_classes or len(config.data.class_names or ()) or \
            dataset_info(config.data.dataset).num_classes
        model = PSPNet(PSPNetConfig.from_dict(config.model_kwargs(num_classes)))
        state, meta = read_state_dict(path)
        load_into(model, state, source=str(path), strict=True)
        meta = {"class_names": None, "palette": None, "config": model.config.to_dict()}
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(dev).eval(), meta
