"""pspnet: PSPNet (Zhao et al., CVPR 2017) for semantic segmentation: train, evaluate, predict, export."""

from .models import PSPNet, PSPNetConfig, pspnet_resnet18, pspnet_resnet34, pspnet_resnet50, pspnet_resnet101
from .version import __version__

__all__ = ["PSPNet", "PSPNetConfig", "pspnet_resnet18", "pspnet_resnet34", "pspnet_resnet50", "pspnet_resnet101",
           "__version__"]
