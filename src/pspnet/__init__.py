"""pspnet: PSPNet (Zhao et al., CVPR 2017) for semantic segmentation: train, evaluate, predict, export.

``pspnet.load(...)`` (the Python API, :mod:`pspnet.api`) is imported on first use."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .models import PSPNet, PSPNetConfig, pspnet_resnet18, pspnet_resnet34, pspnet_resnet50, pspnet_resnet101
from .version import __version__

if TYPE_CHECKING:
    from .api import Model, Prediction, load

__all__ = ["Model", "PSPNet", "PSPNetConfig", "Prediction", "load", "pspnet_resnet18", "pspnet_resnet34",
           "pspnet_resnet50", "pspnet_resnet101", "__version__"]

_API = ("Model", "Prediction", "load")


def __getattr__(name: str) -> Any:
    if name in _API:  # lazily: "import pspnet" stays as light as it was
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'pspnet' has no attribute {name!r}")
