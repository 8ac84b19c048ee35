"""The PSPNet model family: dilated ResNets, the pyramid pooling module, SPP, heads and loss."""

from .loss import PSPNetLoss
from .ppm import PyramidPoolingModule
from .pspnet import (
    PSPNet,
    PSPNetConfig,
    build_pspnet,
    pspnet_resnet18,
    pspnet_resnet34,
    pspnet_resnet50,
    pspnet_resnet101,
    pspnet_resnet152,
)
from .resnet import ResNet, resnet18, resnet34, resnet50, resnet101, resnet152
from .spp import SpatialPyramidPooling, SPPClassifier, spp_resnet18

__all__ = ["PSPNetLoss", "PyramidPoolingModule", "PSPNet", "PSPNetConfig", "build_pspnet",
           "pspnet_resnet18", "pspnet_resnet34", "pspnet_resnet50", "pspnet_resnet101", "pspnet_resnet152",
           "ResNet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "SPPClassifier",
           "SpatialPyramidPooling", "spp_resnet18"]
