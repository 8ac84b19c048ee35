"""The pyramid pooling module and the head's 3x3 convolution with the pooled branches' share of
that convolution computed at the branches' own resolution (an exact rewrite for inference).

In PSPNet (Zhao et al. 2017, Sec. 3.3, Fig. 3c-d) each pyramid level ``z_b`` (``b x b`` bins, ``r``
channels) is upsampled bilinearly to the feature map's ``H x W`` and concatenated with it, and the
3x3 head convolution runs over all ``C + len(bins) * r`` channels (4096 for ResNet-50): half of
that convolution's work - about a fifth of the whole network at 473x473 - is spent on channels
that only hold upsampled ``b x b`` maps.

Bilinear upsampling is linear and separable, ``U z = R_h z R_w^T`` (``R_h``: ``H x b``,
``R_w``: ``W x b``), and it acts on each channel alone, so it commutes with the convolution's
channel mixing. For the 3x3 taps ``W_{di,dj}`` (``O x r`` matrices) and zero padding:

    conv3x3(U z)[:, i, j] = sum_{di,dj} (R_h^{di} (W_{di,dj} z) R_w^{dj T})[:, i, j]

with ``R_h^{di}`` the rows of ``R_h`` shifted by ``di - 1`` (zero rows where the shifted row falls
outside the map, which is exactly the zero padding). The right-hand side costs
``9 O r b^2`` multiply-adds for the taps and a few small matrix products for the upsampling,
instead of ``9 O r H W``; the sum of all levels is added to the convolution over the backbone
channels inside the same fused primitive (``residual``) before the ReLU. The height products of all
levels run as one, their matrices side by side, so the ``O x H x W`` sum is written once, not once
per level. In exact arithmetic the result is identical; in floating point it differs by rounding
only (the levels' share is computed in fp32 even in bf16 mode).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from ..models.pspnet import PSPNet

__all__ = ["FactoredPPMHead", "FactoredPSPNet", "ConvAddReLU", "interpolation_matrix", "shifted_interpolation_matrices",
           "factorable_head_conv", "split_head_conv"]


def interpolation_matrix(out_size: int, in_size: int, align_corners: bool) -> torch.Tensor:
    """``out_size x in_size`` matrix ``R`` with ``F.interpolate`` (linear, 1-D) equal to ``R @ v``;
    built by interpolating the unit vectors, so it follows PyTorch's convention exactly."""
    eye = torch.eye(in_size, dtype=torch.float64).view(1, in_size, in_size)  # channel c = e_c
    r = F.interpolate(eye, size=out_size, mode="linear", align_corners=align_corners)
    return r[0].t().contiguous()


def shifted_interpolation_matrices(out_size: int, in_size: int, align_corners: bool, kernel: int = 3,
                                   dilation: int = 1) -> torch.Tensor:
    """``kernel x out_size x in_size``: for tap ``k`` row ``i`` holds row ``i + (k - kernel // 2) * dilation``
    of the interpolation matrix, or zeros where that row is outside the map (zero padding)."""
    r = interpolation_matrix(out_size, in_size, align_corners)
    out = torch.zeros(kernel, out_size, in_size, dtype=r.dtype)
    for k in range(kernel):
        shift = (k - kernel // 2) * dilation
        lo, hi = max(0, -shift), min(out_size, out_size - shift)
        if hi > lo:
            out[k, lo:hi] = r[lo + shift:hi + shift]
    return out


def factorable_head_conv(conv: nn.Module, ppm: nn.Module) -> bool:
    """``conv`` is PSPNet's head convolution (Fig. 2(d)) over the PPM output, in the form the
    rewrite covers: 3x3, stride 1, padding 1, dilation 1, one group, with a bias (BN folded)."""
    return (isinstance(conv, nn.Conv2d) and conv.bias is not None and conv.kernel_size == (3, 3)
            and conv.stride == (1, 1) and conv.padding == (1, 1) and conv.dilation == (1, 1)
            and conv.groups == 1 and getattr(ppm, "in_channels", None) is not None
            and conv.in_channels == getattr(ppm, "out_channels", None))


@torch.no_grad()
def split_head_conv(conv: nn.Conv2d, ppm: nn.Module) -> tuple[nn.Conv2d, torch.Tensor]:
    """The head convolution split at the PPM's channel boundary, as fp32 copies: a 3x3 convolution
    (with the bias) over the backbone's ``ppm.in_channels`` channels, and the weight over the
    pyramid levels' channels (the ``tap_weight`` of :class:`FactoredPPMHead`)."""
    c = ppm.in_channels
    conv_x = nn.Conv2d(c, conv.out_channels, 3, padding=1, bias=True, device=conv.weight.device)
    conv_x.weight.copy_(conv.weight[:, :c].float())
    conv_x.bias.copy_(conv.bias.float())
    return conv_x, conv.weight.detach()[:, c:].float().clone()


class FactoredPPMHead(nn.Module):
    """``relu(conv3x3(cat[x, U z_1, ..., U z_B]) + bias)`` computed as
    ``conv_x(x, residual=sum_b levels_b)`` (module docstring).

    Args:
        branches: one module per pyramid level mapping ``x`` to ``z_b`` (``N x r x b x b``): the
            PPM's pooling, 1x1 convolution (BN folded) and ReLU.
        bins: the levels' bin counts, in the order of ``branches`` and of the head's input channels.
        tap_weight: the head convolution's weight over the levels' channels,
            ``O x (B * r) x 3 x 3`` (BN folded), stride 1, padding 1, dilation 1.
        conv_x: callable ``conv_x(x, residual)`` = ReLU(conv over the backbone channels + bias + residual).
        align_corners: the PPM's upsampling convention.
    """

    def __init__(self, branches: nn.ModuleList, bins: tuple[int, ...], tap_weight: torch.Tensor,
                 conv_x: Callable[..., torch.Tensor], align_corners: bool) -> None:
        super().__init__()
        if tap_weight.dim() != 4 or tap_weight.shape[-2:] != (3, 3):
            raise ValueError(f"expected a 3x3 head convolution weight, got shape {tuple(tap_weight.shape)}")
        if tap_weight.shape[1] % len(bins):
            raise ValueError(f"{tap_weight.shape[1]} level channels do not split into {len(bins)} levels")
        self.branches, self.bins, self.conv_x = branches, tuple(bins), conv_x
        self.align_corners = align_corners
        out_ch, r = tap_weight.shape[0], tap_weight.shape[1] // len(bins)
        # per level: (3 * 3 * O) x r, rows ordered (di, dj, o), fp32
        taps = tap_weight.detach().float().view(out_ch, len(bins), r, 3, 3).permute(1, 3, 4, 0, 2)
        self.register_buffer("taps", taps.reshape(len(bins), 9 * out_ch, r).contiguous(), persistent=False)
        self.out_channels = out_ch
        self._matrices: dict[tuple, tuple[list[torch.Tensor], torch.Tensor]] = {}

    def _interp(self, h: int, w: int, device: torch.device,
                dtype: torch.dtype) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per level the shifted width matrices (``3 x W x b``), and the levels' shifted height matrices
        side by side (``3 x H x sum(bins)``), cached per (size, device, dtype)."""
        key = (h, w, device, dtype)
        if key not in self._matrices:
            if len(self._matrices) >= 8:
                self._matrices.pop(next(iter(self._matrices)))
            widths = [shifted_interpolation_matrices(w, b, self.align_corners).to(device, dtype) for b in self.bins]
            heights = torch.cat([shifted_interpolation_matrices(h, b, self.align_corners) for b in self.bins], dim=2)
            self._matrices[key] = (widths, heights.to(device, dtype))
        return self._matrices[key]

    def levels(self, x: torch.Tensor) -> torch.Tensor:
        """The pyramid levels' share of the head convolution, ``N x O x H x W`` in fp32 (float64 for a
        float64 input)."""
        n, h, w = (int(v) for v in (x.shape[0], x.shape[2], x.shape[3]))  # constants when traced for export
        dt = torch.float64 if x.dtype == torch.float64 else torch.float32
        widths, heights = self._interp(h, w, x.device, dt)
        upsampled_widths = []
        for branch, b, taps, rw in zip(self.branches, self.bins, self.taps, widths):
            z = branch(x).to(dt).reshape(n, -1, b * b)                              # N x r x b^2
            v = torch.matmul(taps.to(dt), z).view(n, 3, 3, self.out_channels, b, b)  # N x di x dj x O x p x q
            # sum over dj and q: the width upsampling with its shifted matrices (small: b rows)
            upsampled_widths.append(torch.einsum("ndeopq,ejq->ndopj", v, rw))     # N x di x O x p x W
        # sum over di, p and the levels at once: the height upsampling of all levels in one product
        a = torch.cat(upsampled_widths, dim=3)                                      # N x di x O x sum(b) x W
        return torch.einsum("dip,ndopj->noij", heights, a)                          # N x O x H x W

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.levels(x).to(dtype=x.dtype, memory_format=torch.channels_last)
        return self.conv_x(x, residual)


class ConvAddReLU(nn.Module):
    """``relu(conv(x) + residual)`` with plain ops (what the exported graph needs)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x) + residual)


class FactoredPSPNet(nn.Module):
    """A folded PSPNet's eval forward whose PPM + head convolution run as a :class:`FactoredPPMHead`
    with plain ops, for the fixed-shape graphs that are exported (the interpolation matrices
    become constants of the graph): ONNX Runtime's (:mod:`.onnxruntime`) and torch int8's
    (:mod:`.int8`)."""

    def __init__(self, net: PSPNet) -> None:
        super().__init__()
        self.net = net
        head = net.head
        conv_x, tap_weight = split_head_conv(head[0], net.ppm)
        self.factored = FactoredPPMHead(net.ppm.features, net.ppm.bins, tap_weight, ConvAddReLU(conv_x),
                                        net.config.align_corners)
        # what follows the head's conv, BN (folded) and ReLU: eval-mode dropout (Identity), the classifier
        rest = [m for m in list(head)[3:] if not isinstance(m, nn.Identity)]
        self.rest = nn.Sequential(*rest, net.get_classifier())

    @staticmethod
    def applies(net: PSPNet) -> bool:
        """The folded head is the factorable conv, Identity (its BN), ReLU, ... and each level a 1x1 conv."""
        head = net.head
        return (len(head) >= 3 and factorable_head_conv(head[0], net.ppm) and isinstance(head[1], nn.Identity)
                and isinstance(head[2], nn.ReLU) and all(isinstance(f[1], nn.Conv2d) for f in net.ppm.features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, features = self.net.forward_features(x)
        return self.net.upsample(self.rest(self.factored(features)), x.shape[-2:])
