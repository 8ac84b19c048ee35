"""Batch norm, the residual add and ReLU in one pass over memory, for training on a CPU.

In a ResNet block eager PyTorch runs batch norm's statistics and its transform, the residual add and
ReLU as separate passes over the activation, forward and backward; on a CPU whose convolutions run
near the matrix peak (AMX) these memory-bound passes are a quarter of a training step (issue 16,
docs/benchmarks.md). :func:`bn_relu` computes ``relu(bn(x) [+ residual])`` with a small C++ kernel
(``kernels/bn_relu.cpp``): the forward reads ``x`` twice (statistics, then transform), the backward
reads the gradient and ``x`` twice. It is the same function as the eager layers to rounding: batch
statistics, running-average update (unbiased variance, ``momentum``), ``num_batches_tracked``, and
the gradients of input, weight, bias and residual.

The kernel is built on first use with the system's ``g++`` for this CPU and cached
(:mod:`pspnet.models.kernels`). Everywhere else the eager
layers run, unchanged: in eval mode (inference and export never see the kernel), off the CPU, for
tensors not in channels-last layout, for other norms (GroupNorm, the synchronised BatchNorm of a DDP
run), under ``torch.compile``, where no compiler is found, or with ``PSPNET_CPU_KERNELS=0``.
"""

from __future__ import annotations

import ctypes
import functools

import torch
from torch import nn

from . import kernels

__all__ = ["NormActSequential", "bn_relu", "fused_bn_available"]


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    """The compiled kernel (``kernels/bn_relu.cpp``) with its signatures; None where it cannot be built."""
    ptr, i64, f32p, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.POINTER(ctypes.c_float), ctypes.c_int
    return kernels.library("bn_relu", {
        "pspnet_bn_stats": [c_int, ptr, i64, i64, c_int, f32p, f32p],
        "pspnet_bn_forward": [c_int, ptr, ptr, ptr, i64, i64, f32p, f32p, c_int, c_int],
        "pspnet_bn_backward_reduce": [c_int, ptr, ptr, ptr, ptr, i64, i64, f32p, f32p, f32p, c_int, c_int, f32p, f32p],
        "pspnet_bn_backward_apply": [c_int, ptr, ptr, ptr, i64, i64, f32p, f32p, f32p, f32p, f32p, f32p, c_int, c_int]})


def fused_bn_available() -> bool:
    """Whether :func:`bn_relu` runs the kernel where it applies (not disabled, and it builds here)."""
    return kernels.enabled() and _library() is not None


_ptr, _fptr = kernels.ptr, kernels.float_ptr


class _BatchNormReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, residual, running_mean, running_var, momentum, eps):
        lib, threads, dtype = _library(), torch.get_num_threads(), kernels.DTYPES[x.dtype]
        rows, channels = x.numel() // x.shape[1], x.shape[1]
        mean, var = x.new_empty(channels, dtype=torch.float32), x.new_empty(channels, dtype=torch.float32)
        lib.pspnet_bn_stats(dtype, _ptr(x), rows, channels, threads, _fptr(mean), _fptr(var))
        invstd = torch.rsqrt(var + eps)
        scale = (weight.detach().float() * invstd).contiguous()
        shift = (bias.detach().float() - mean * scale).contiguous()
        y = torch.empty_like(x, memory_format=torch.channels_last)
        lib.pspnet_bn_forward(dtype, _ptr(x), _ptr(residual), _ptr(y), rows, channels, _fptr(scale), _fptr(shift),
                              1, threads)
        with torch.no_grad():  # nn.BatchNorm2d's running averages: unbiased variance
            running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
            running_var.mul_(1 - momentum).add_(var * (rows / max(rows - 1, 1)), alpha=momentum)
        ctx.has_residual = residual is not None
        ctx.save_for_backward(x, y if residual is not None else None, weight, mean, invstd, scale, shift)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, y, weight, mean, invstd, scale, shift = ctx.saved_tensors
        lib, threads, dtype = _library(), torch.get_num_threads(), kernels.DTYPES[x.dtype]
        rows, channels = x.numel() // x.shape[1], x.shape[1]
        grad_y = grad_y.to(x.dtype).contiguous(memory_format=torch.channels_last)
        grad_pre = torch.empty_like(x, memory_format=torch.channels_last) if ctx.has_residual else None
        sum_g, sum_gx = mean.new_empty(channels), mean.new_empty(channels)
        lib.pspnet_bn_backward_reduce(dtype, _ptr(grad_y), _ptr(x), _ptr(y), _ptr(grad_pre), rows, channels,
                                      _fptr(scale), _fptr(shift), _fptr(mean), 1, threads, _fptr(sum_g),
                                      _fptr(sum_gx))
        w = weight.detach().float()
        k_g = (w * invstd).contiguous()
        k_x = (-w * invstd.pow(3) * sum_gx / rows).contiguous()
        k_0 = (-k_g * sum_g / rows).contiguous()
        grad_x = torch.empty_like(x, memory_format=torch.channels_last)
        # with a residual the masked gradient is already in grad_pre; otherwise mask grad_y again
        source, relu = (grad_pre, 0) if ctx.has_residual else (grad_y, 1)
        lib.pspnet_bn_backward_apply(dtype, _ptr(source), _ptr(x), _ptr(grad_x), rows, channels, _fptr(scale),
                                     _fptr(shift), _fptr(mean), _fptr(k_g), _fptr(k_x), _fptr(k_0), relu, threads)
        grad_w = (sum_gx * invstd).to(weight.dtype)
        grad_b = sum_g.to(weight.dtype)
        return grad_x, grad_w, grad_b, grad_pre, None, None, None, None


def _applies(bn: nn.Module, x: torch.Tensor, residual: torch.Tensor | None) -> bool:
    return (bn.training and type(bn) is nn.BatchNorm2d and bn.affine and bn.track_running_stats
            and bn.momentum is not None and x.device.type == "cpu" and x.dtype in kernels.DTYPES and x.dim() == 4
            and x.numel() // x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last)
            and (residual is None or (residual.shape == x.shape and residual.dtype == x.dtype
                                      and residual.is_contiguous(memory_format=torch.channels_last)))
            and not torch.compiler.is_compiling() and fused_bn_available())


def bn_relu(bn: nn.Module, x: torch.Tensor, relu: nn.Module, residual: torch.Tensor | None = None) -> torch.Tensor:
    """``relu(bn(x) + residual)`` (no add without ``residual``): one fused pass where it applies
    (module docstring), otherwise exactly these modules, eagerly."""
    if _applies(bn, x, residual):
        bn.num_batches_tracked.add_(1)
        return _BatchNormReLU.apply(x, bn.weight, bn.bias, residual, bn.running_mean, bn.running_var,
                                    bn.momentum, bn.eps)
    out = bn(x)
    return relu(out if residual is None else out + residual)


class NormActSequential(nn.Sequential):
    """An ``nn.Sequential`` (same layers, same state-dict keys) that runs each BatchNorm directly
    followed by a ReLU through :func:`bn_relu`: the ResNet stem, the classifier heads."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers = list(self)
        i = 0
        while i < len(layers):
            if isinstance(layers[i], nn.BatchNorm2d) and i + 1 < len(layers) and isinstance(layers[i + 1], nn.ReLU):
                x = bn_relu(layers[i], x, layers[i + 1])
                i += 2
            else:
                x = layers[i](x)
                i += 1
        return x
