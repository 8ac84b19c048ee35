"""The factored PPM head (pspnet.inference.factored_head) computes the same function as PSPNet's
PPM + 3x3 head convolution: checked in float64 against the plain modules for several pyramids,
pooling modes, upsampling conventions and feature-map sizes (smaller than the bins included)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pspnet.cpu import onednn_available
from pspnet.inference.factored_head import FactoredPPMHead, interpolation_matrix, shifted_interpolation_matrices
from pspnet.inference.fast import FastPSPNet
from pspnet.inference.folding import fold_batchnorm
from pspnet.inference.prepare import prepare_for_inference
from pspnet.models.ppm import PyramidPoolingModule


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("out_size,in_size", [(60, 1), (60, 6), (7, 3), (2, 6), (1, 1), (5, 5)])
def test_interpolation_matrix_is_pytorch_bilinear(align_corners, out_size, in_size):
    g = torch.Generator().manual_seed(out_size * 10 + in_size)
    z = torch.randn(2, 3, in_size, in_size + 1, dtype=torch.float64, generator=g)
    rh = interpolation_matrix(out_size, in_size, align_corners)
    rw = interpolation_matrix(out_size + 2, in_size + 1, align_corners)
    ref = F.interpolate(z, (out_size, out_size + 2), mode="bilinear", align_corners=align_corners)
    torch.testing.assert_close(rh @ z @ rw.t(), ref, rtol=1e-12, atol=1e-12)


def test_shifted_matrices_zero_pad_the_borders():
    r = interpolation_matrix(5, 2, True)
    s = shifted_interpolation_matrices(5, 2, True)
    torch.testing.assert_close(s[1], r)
    torch.testing.assert_close(s[0, 1:], r[:-1])
    torch.testing.assert_close(s[2, :-1], r[1:])
    assert s[0, 0].abs().sum() == 0 and s[2, -1].abs().sum() == 0


def _randomise_bn(module: nn.Module, g: torch.Generator) -> None:
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)


@pytest.mark.parametrize("bins,pool,align_corners,hw", [
    ((1, 2, 3, 6), "avg", True, (13, 17)),
    ((1, 2, 3, 6), "avg", True, (2, 3)),      # feature map smaller than the 6x6 level
    ((1, 2, 3, 6), "max", False, (7, 5)),
    ((1, 4), "avg", False, (1, 1)),
    ((3,), "max", True, (9, 4)),
])
def test_factored_head_equals_ppm_then_conv_in_float64(bins, pool, align_corners, hw):
    g = torch.Generator().manual_seed(sum(bins) + hw[0] * hw[1])
    torch.manual_seed(0)
    c, out_ch = 16, 6
    ppm = PyramidPoolingModule(c, bins, pool=pool, align_corners=align_corners).double().eval()
    head = nn.Conv2d(ppm.out_channels, out_ch, 3, padding=1, bias=True).double()
    _randomise_bn(ppm, g)
    x = torch.randn(2, c, *hw, dtype=torch.float64, generator=g)
    with torch.no_grad():
        ref = torch.relu(head(ppm(x)))
        conv_x = lambda t, residual: torch.relu(F.conv2d(t, head.weight[:, :c], head.bias, padding=1) + residual)  # noqa: E731
        fact = FactoredPPMHead(ppm.features, ppm.bins, head.weight[:, c:], conv_x, align_corners)
        out = fact.levels(x)
        out = conv_x(x, out)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    # and it is not trivially so: dropping the levels' share changes the result
    assert (conv_x(x, torch.zeros_like(out)) - ref).abs().max() > 1e-3


def test_factored_head_rejects_a_non_3x3_weight():
    ppm = PyramidPoolingModule(8, (1, 2))
    with pytest.raises(ValueError, match="3x3"):
        FactoredPPMHead(ppm.features, ppm.bins, torch.zeros(4, 8, 1, 1), lambda t, r: t, True)


@pytest.mark.skipif(not onednn_available(), reason="needs PyTorch's oneDNN fused convolutions")
@pytest.mark.parametrize("align_corners", [True, False])
def test_fast_model_uses_the_factored_head_and_matches_the_plain_one(align_corners, tiny_pspnet):
    model = tiny_pspnet(5, head_channels=24, align_corners=align_corners).eval()
    _randomise_bn(model, torch.Generator().manual_seed(1))
    x = torch.randn(1, 3, 61, 83)
    fast = prepare_for_inference(model, "fp32")
    plain = FastPSPNet(fold_batchnorm(model), "fp32", factor_head=False)
    assert fast.factored is not None and plain.factored is None
    with torch.no_grad():
        ref = model(x)
        for m in (fast, plain):
            torch.testing.assert_close(m(x), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
