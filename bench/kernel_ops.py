"""Time each CPU training kernel (forward + backward) at the CamVid bench shapes, caches flushed.

The kernels build with the flags of ``pspnet.models.kernels`` plus ``$PSPNET_KERNEL_CXXFLAGS``, so two
builds compare by running this once per setting, alternating:

    for i in 1 2 3 4 5; do for f in -mprefer-vector-width=256 ""; do
        PSPNET_KERNEL_CXXFLAGS="$f" python bench/kernel_ops.py; done; done

Each figure is the median of 12 calls after 3 untimed ones, in milliseconds, including the autograd
call around the kernel (what a training step pays).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from pspnet import bench
from pspnet.models import kernels
from pspnet.models.loss import upsampled_cross_entropy
from pspnet.models.max_pool import MaxPool2d
from pspnet.models.norm_act import bn_relu

_FLUSH = torch.empty(64 << 20, dtype=torch.uint8)  # larger than the caches: every call starts cold


def median_ms(fn: Callable[[], None], calls: int = 15, warmup: int = 3) -> float:
    times = []
    for _ in range(calls):
        _FLUSH.add_(1)
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times[warmup:]) * 1000


def cases(batch: int = 8, crop: tuple[int, int] = (192, 256)) -> dict[str, Callable[[], None]]:
    """The kernels at PSPNet-18's bench shapes (``pspnet bench --what train``), bf16 as autocast runs them."""
    torch.manual_seed(0)
    h, w = crop

    def nhwc(*shape: int) -> torch.Tensor:
        return torch.randn(*shape).bfloat16().to(memory_format=torch.channels_last).requires_grad_()

    relu = nn.ReLU()
    bn64, stem = nn.BatchNorm2d(64).train(), nhwc(batch, 64, h // 2, w // 2)
    bn256, deep = nn.BatchNorm2d(256).train(), nhwc(batch, 256, h // 8, w // 8)
    residual = torch.randn_like(deep).requires_grad_(False)
    logits = torch.randn(batch, 11, h // 8, w // 8).bfloat16().requires_grad_()
    target = torch.randint(0, 11, (batch, h, w))
    pool = MaxPool2d(3, 2, 1)

    def backward(y: torch.Tensor) -> None:
        y.backward(torch.ones_like(y))

    return {
        f"bn+relu {tuple(stem.shape)}": lambda: backward(bn_relu(bn64, stem, relu)),
        f"bn+add+relu {tuple(deep.shape)}": lambda: backward(bn_relu(bn256, deep, relu, residual)),
        f"upsampled CE {tuple(logits.shape)}->{h}x{w}":
            lambda: upsampled_cross_entropy(logits, target).mean().backward(),
        f"max pool 3/2 {tuple(stem.shape)}": lambda: backward(pool(stem)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, nargs=2, default=(192, 256), metavar=("H", "W"))
    args = p.parse_args(argv)
    print(bench.format_machine())
    print(f"kernel flags: {' '.join(kernels._flags())}; {kernels.FLAGS_ENV}={os.environ.get(kernels.FLAGS_ENV, '')!r}")
    for name, fn in cases(args.batch, tuple(args.crop)).items():
        print(f"  {name:<44} {median_ms(fn):7.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
