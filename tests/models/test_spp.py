"""Spatial pyramid pooling (He et al. 2014): a fixed-length vector for any input size."""

from __future__ import annotations

import pytest
import torch

from pspnet.models import SpatialPyramidPooling, SPPClassifier, spp_resnet18
from pspnet.models.resnet import ResNet


@pytest.mark.parametrize("hw", [(1, 1), (3, 5), (4, 4), (7, 13), (64, 31)])
def test_default_levels_give_21_d_values(hw):
    d = 6
    x = torch.randn(2, d, *hw)
    out = SpatialPyramidPooling()(x)
    assert out.shape == (2, (1 + 4 + 16) * d)


def test_values_are_the_max_of_each_bin():
    x = torch.arange(16.0).view(1, 1, 4, 4)  # increasing row-major: a bin's max is its bottom-right
    out = SpatialPyramidPooling((1, 2, 4))(x)[0]
    assert out[0].item() == 15  # 1x1 level: global max
    assert out[1:5].tolist() == [5, 7, 13, 15]  # 2x2 level
    assert out[5:].tolist() == list(range(16))  # 4x4 level on a 4x4 map: the map itself
    avg = SpatialPyramidPooling((1,), pool="avg")(x)[0]
    assert avg.tolist() == [7.5]


@pytest.mark.parametrize("levels", [(1,), (1, 2, 3, 6), (2, 5)])
def test_configured_levels(levels):
    d = 3
    spp = SpatialPyramidPooling(levels)
    assert spp.output_size(d) == d * sum(b * b for b in levels)
    for hw in [(2, 2), (9, 17), (40, 23)]:
        assert spp(torch.randn(1, d, *hw)).shape == (1, spp.output_size(d))


@pytest.mark.parametrize("levels, pool, msg", [((), "max", "levels"), ((0, 2), "max", "levels"),
                                               ((1,), "median", "pool")])
def test_invalid_settings(levels, pool, msg):
    with pytest.raises(ValueError, match=msg):
        SpatialPyramidPooling(levels, pool=pool)


def test_rejects_non_image_tensors():
    with pytest.raises(ValueError, match="N x C x H x W"):
        SpatialPyramidPooling()(torch.randn(3, 8, 8))


def test_classifier_same_length_for_different_input_sizes():
    torch.manual_seed(0)
    model = spp_resnet18(num_classes=10, hidden=64).eval()
    lengths = set()
    with torch.no_grad():
        for hw in [(64, 64), (96, 48), (47, 113)]:
            x = torch.randn(2, 3, *hw)
            v = model.features(x)
            logits = model(x)
            lengths.add(v.shape[1])
            assert logits.shape == (2, 10)
            assert torch.isfinite(logits).all()
    assert lengths == {21 * 512}


def test_classifier_with_configured_levels_and_dilated_backbone():
    backbone = ResNet(18, deep_stem=True, output_stride=8)
    model = SPPClassifier(backbone, num_classes=4, levels=(1, 3), hidden=32).eval()
    with torch.no_grad():
        a = model.features(torch.randn(1, 3, 40, 40))
        b = model.features(torch.randn(1, 3, 72, 24))
        assert a.shape == b.shape == (1, 10 * 512)
        assert model(torch.randn(1, 3, 33, 65)).shape == (1, 4)

