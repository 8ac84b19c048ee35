"""The stem's max pooling: the CPU training kernel against nn.MaxPool2d."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pspnet.models.max_pool import MaxPool2d, _MaxPool


def _pooled_and_grad(pool: nn.Module, x: torch.Tensor, grad_dtype: torch.dtype | None = None):
    """The pooled ``x`` and the input's gradient for a fixed random output gradient (rounded to
    ``grad_dtype`` first, if given)."""
    leaf = x.clone().requires_grad_()
    y = pool(leaf)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(grad_dtype or x.dtype).to(x.dtype)
    (gx,) = torch.autograd.grad(y, leaf, g.contiguous(memory_format=torch.channels_last))
    return y, gx


def _with_ties(shape) -> torch.Tensor:
    """ReLU'd values rounded to one decimal: windows full of equal maxima (zeros and repeats), one NaN."""
    x = torch.relu(torch.randn(shape, generator=torch.Generator().manual_seed(0))).round(decimals=1)
    x[0, 1, 2, 3] = float("nan")
    return x.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(("kernel_size", "stride", "padding", "size"),
                         [(3, 2, 1, (13, 17)), (3, 2, 1, (96, 128)), (2, 2, 0, (9, 10)), (3, 1, 1, (7, 8))])
def test_the_kernel_is_nn_maxpool2d_bit_for_bit_in_float32(count_forward_calls, kernel_size, stride, padding, size):
    """Same winner among equal maxima (the first, or a NaN), same gradient sums in the same order;
    stride 1 lets a pixel win up to 9 windows."""
    calls = count_forward_calls(_MaxPool)
    x = _with_ties((2, 16, *size))
    y, gx = _pooled_and_grad(MaxPool2d(kernel_size, stride, padding).train(), x)
    want_y, want_gx = _pooled_and_grad(nn.MaxPool2d(kernel_size, stride, padding), x)
    assert len(calls) == 1
    assert torch.equal(y, want_y) or torch.allclose(y, want_y, equal_nan=True, rtol=0, atol=0)
    assert y.is_contiguous(memory_format=torch.channels_last) and gx.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(gx, want_gx)


def test_in_bfloat16_the_gradient_is_rounded_once():
    """bfloat16: the same winners; each input gradient is the float32 sum rounded to bfloat16 once
    (ATen rounds after every addition)."""
    x = _with_ties((2, 16, 13, 17)).bfloat16()
    y, gx = _pooled_and_grad(MaxPool2d(3, 2, 1).train(), x)
    # bfloat16 values are exact in float32
    want_y, want_gx = _pooled_and_grad(nn.MaxPool2d(3, 2, 1), x.float(), grad_dtype=torch.bfloat16)
    assert torch.allclose(y.float(), want_y, equal_nan=True, rtol=0, atol=0)
    assert torch.equal(gx, want_gx.bfloat16())


def test_without_training_or_a_channels_last_input_it_is_nn_maxpool2d(count_forward_calls):
    calls = count_forward_calls(_MaxPool)
    x = _with_ties((2, 4, 8, 8)).requires_grad_()
    MaxPool2d(3, 2, 1).eval()(x)  # inference and export
    with torch.no_grad():
        MaxPool2d(3, 2, 1).train()(x)
    MaxPool2d(3, 2, 1).train()(x.contiguous())  # NCHW
    MaxPool2d(3, 2, 1, ceil_mode=True).train()(x)
    MaxPool2d(3, 2, 1, dilation=2).train()(x)
    assert calls == []
