"""The pyramid pooling module: layout, and the matrix-product backward it trains with on a CPU."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from pspnet.models.ppm import PyramidPoolingModule, _PoolLevels, _UpsampleConcat


def _eager(ppm: PyramidPoolingModule, x: torch.Tensor) -> torch.Tensor:
    """The module's function written out with autograd's own operations."""
    levels = [F.interpolate(f(x), x.shape[-2:], mode="bilinear", align_corners=ppm.align_corners)
              for f in ppm.features]
    return torch.cat([x, *levels], 1)


@pytest.mark.parametrize("kernels", ["1", "0"])
def test_ppm_keeps_a_channels_last_input_channels_last_with_the_same_values(monkeypatch, kernels):
    # Its 1x1 level upsamples to NCHW; without matching the input's layout the concatenation is NCHW
    # and the head's convolution reorders twice its width forward and backward in channels_last training.
    monkeypatch.setenv("PSPNET_CPU_KERNELS", kernels)
    torch.manual_seed(0)
    ppm = PyramidPoolingModule(16).train()
    x = torch.randn(2, 16, 6, 8)
    x_last = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    out = ppm(x_last)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    assert ppm(x).is_contiguous()  # an NCHW input stays NCHW (export, fp32 inference)
    assert torch.equal(out, _eager(ppm, x_last))
    grad = torch.randn_like(out)
    (got,) = torch.autograd.grad(out, x_last, grad)
    assert got.is_contiguous(memory_format=torch.channels_last)
    if kernels == "0":  # autograd's own backward: bitwise the same
        (want,) = torch.autograd.grad(_eager(ppm, x_last), x_last, grad)
        assert torch.equal(got, want)


@pytest.mark.parametrize(("size", "align_corners", "layout"), [
    ((12, 16), True, torch.channels_last), ((13, 17), False, torch.channels_last), ((5, 7), True, torch.channels_last),
    ((12, 16), True, torch.contiguous_format)])
def test_the_matrix_backward_gives_autograds_gradients(count_forward_calls, size, align_corners, layout):
    """In float64 the pooling + upsampling backward as matrix products equals autograd's to rounding, for
    maps the bins divide and maps where adaptive pooling's bins overlap (13 rows into 6 bins), with
    a map smaller than the largest level (5 rows into 6 bins: bins repeat rows), and for NCHW tensors."""
    pools, concats = count_forward_calls(_PoolLevels), count_forward_calls(_UpsampleConcat)
    torch.manual_seed(0)
    ppm = PyramidPoolingModule(8, align_corners=align_corners).train().double()
    x = torch.randn(2, 8, *size, dtype=torch.float64).contiguous(memory_format=layout)
    grad = torch.randn(2, 16, *size, dtype=torch.float64)
    results = []
    for out_fn in (ppm, lambda t: _eager(ppm, t)):
        leaf = x.clone().requires_grad_()
        out = out_fn(leaf)
        grads = torch.autograd.grad(out, [leaf, *ppm.parameters()], grad)
        results.append((out.detach(), grads))
    assert len(pools) == len(concats) == 1  # the module ran the matrix backward, the eager expression did not
    (out, got), (want_out, want) = results
    assert torch.equal(out, want_out)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


def test_the_matrix_backward_is_as_close_to_float64_in_bfloat16_as_autograds(monkeypatch):
    torch.manual_seed(0)
    reference = PyramidPoolingModule(32).train()
    x = torch.randn(4, 32, 24, 32).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(4, 64, 24, 32).contiguous(memory_format=torch.channels_last)

    def gradients(dtype: torch.dtype, kernels: str) -> list[torch.Tensor]:
        monkeypatch.setenv("PSPNET_CPU_KERNELS", kernels)
        ppm = PyramidPoolingModule(32).train().to(dtype)
        ppm.load_state_dict(reference.state_dict())
        leaf = x.to(dtype).requires_grad_()
        return [g.double() for g in torch.autograd.grad(ppm(leaf), [leaf, *ppm.parameters()], grad.to(dtype))]

    exact = gradients(torch.float64, "0")
    for kernels in ("1", "0"):
        err = [((g - e).norm() / e.norm()).item() for g, e in zip(gradients(torch.bfloat16, kernels), exact)]
        if kernels == "1":
            ours = err
    # bfloat16 has 8 bits of mantissa: both are off by 1-6%; the matrix products no more than autograd
    assert max(ours) < 0.1
    assert all(a <= 1.5 * b + 1e-3 for a, b in zip(ours, err))


def test_without_grad_in_eval_mode_or_with_max_pooling_the_module_runs_autograds_code(count_forward_calls, monkeypatch):
    pools = count_forward_calls(_PoolLevels)
    x = torch.randn(2, 8, 6, 6)
    PyramidPoolingModule(8).train()(x)  # no gradient asked for
    PyramidPoolingModule(8, pool="max").train()(x.requires_grad_())
    PyramidPoolingModule(8).eval()(x)  # inference, ONNX export
    monkeypatch.setenv("PSPNET_CPU_KERNELS", "0")
    PyramidPoolingModule(8).train()(x)
    assert pools == []
    monkeypatch.delenv("PSPNET_CPU_KERNELS")
    PyramidPoolingModule(8).train()(x)
    assert len(pools) == 1
