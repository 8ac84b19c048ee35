"""The ResNet stem's max pooling, with a CPU kernel for training.

Eager PyTorch's max pooling backward fills the stem's input gradient with zeros, then scatters into
it through int64 indices: on PSPNet-18's CamVid step (8 x 128 x 96 x 128) forward, fill and backward
took about 15 ms (issue 16, docs/benchmarks.md). :class:`MaxPool2d` trains on a CPU with a small C++
kernel (``kernels/max_pool.cpp``) that keeps one byte per output for the winning window position and
writes the input gradient in one pass, each pixel gathering from the windows it won. It picks ATen's
winner (the first maximum, or a NaN), so the output and, in float32, the gradient are bitwise ATen's.

It is ``nn.MaxPool2d`` everywhere else: in eval mode or without gradients (inference, export), off
the CPU, for a tensor not in channels_last layout, with dilation, ceil mode or returned indices,
under ``torch.compile``, where no compiler is found, or with ``PSPNET_CPU_KERNELS=0``.
"""

from __future__ import annotations

import ctypes
import functools

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from . import kernels

__all__ = ["MaxPool2d", "max_pool_kernel_available"]


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    p, i64, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    signature = [c_int, p, p, p, i64, i64, i64, i64, i64, i64, i64, i64, i64, c_int]
    return kernels.library("max_pool", {"pspnet_max_pool_forward": signature, "pspnet_max_pool_backward": signature})


def max_pool_kernel_available() -> bool:
    """Whether :class:`MaxPool2d` trains with the kernel where it applies (not disabled, and it builds)."""
    return kernels.enabled() and _library() is not None


class _MaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding):
        n, c, h, w = x.shape
        out_h, out_w = (h + 2 * padding - kernel_size) // stride + 1, (w + 2 * padding - kernel_size) // stride + 1
        y = torch.empty((n, c, out_h, out_w), dtype=x.dtype, memory_format=torch.channels_last)
        winner = torch.empty((n, out_h, out_w, c), dtype=torch.uint8)
        _library().pspnet_max_pool_forward(kernels.DTYPES[x.dtype], kernels.ptr(x), kernels.ptr(y),
                                           kernels.ptr(winner), n, h, w, c, out_h, out_w, kernel_size, stride,
                                           padding, torch.get_num_threads())
        ctx.save_for_backward(winner)
        ctx.meta = (x.shape, x.dtype, kernel_size, stride, padding)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        (winner,) = ctx.saved_tensors
        (n, c, h, w), dtype, kernel_size, stride, padding = ctx.meta
        out_h, out_w = winner.shape[1:3]
        grad_y = grad_y.to(dtype).contiguous(memory_format=torch.channels_last)
        grad_x = torch.empty((n, c, h, w), dtype=dtype, memory_format=torch.channels_last)
        _library().pspnet_max_pool_backward(kernels.DTYPES[dtype], kernels.ptr(grad_y), kernels.ptr(winner),
                                            kernels.ptr(grad_x), n, h, w, c, out_h, out_w, kernel_size, stride,
                                            padding, torch.get_num_threads())
        return grad_x, None, None, None


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` (same arguments) that trains through the CPU kernel where it applies
    (module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        window = self._kernel_window(x)
        if window is not None:
            return _MaxPool.apply(x, *window)
        return super().forward(x)

    def _kernel_window(self, x: torch.Tensor) -> tuple[int, int, int] | None:
        """(kernel size, stride, padding) where the kernel applies to ``x``, else None."""
        (k, k_w), (s, s_w), (p, p_w) = _pair(self.kernel_size), _pair(self.stride), _pair(self.padding)
        applies = (self.training and x.requires_grad and torch.is_grad_enabled() and x.device.type == "cpu"
                   and x.dtype in kernels.DTYPES and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
                   and (k, s, p) == (k_w, s_w, p_w) and _pair(self.dilation) == (1, 1) and k * k < 256
                   and 0 <= p <= k // 2 and min(x.shape[-2:]) + 2 * p >= k
                   and not self.ceil_mode and not self.return_indices and not torch.compiler.is_compiling()
                   and max_pool_kernel_available())
        return (k, s, p) if applies else None
