"""The CPU's matrix-product throughput in fp32 and bf16 (GFLOP/s): the ceiling for PSPNet's convolutions.

    python bench/matmul_peak.py [--n 2048] [--reps 10] [--depths 18,50,101] [--size 473x473]

Also counts the convolution work of PSPNet (eval mode, 19 classes; 2 FLOP per multiply-add) and
the part that the factored PPM head (pspnet/inference/factored_head.py) no longer does: the 3x3 head
convolution over the upsampled pyramid levels. GFLOP / latency against the peak says how close to
the hardware a mode runs.
"""

from __future__ import annotations

import argparse
import sys

import torch

from pspnet import bench


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=2048, help="square matrix size")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--depths", default="18,50,101", help="PSPNet depths whose convolution work to count")
    p.add_argument("--size", default="473x473", help="HxW for the count")
    a = p.parse_args(argv)
    print(bench.format_machine())
    for dtype in (torch.float32, torch.bfloat16):
        gflops = bench.matmul_gflops(dtype, a.n, a.reps)
        med = 2 * a.n ** 3 / gflops / 1e9
        print(f"{a.n}x{a.n} @ {a.n}x{a.n} {str(dtype).removeprefix('torch.'):<9s} median {med * 1000:7.2f} ms  "
              f"{gflops:7.1f} GFLOP/s")
    size = bench.parse_size(a.size)
    for depth in [int(d) for d in a.depths.split(",") if d]:
        total, levels = conv_gflop(bench.build_model(depth, 19), size)
        print(f"PSPNet-{depth} {size[0]}x{size[1]}: convolutions {total:6.1f} GFLOP; head conv over the pyramid "
              f"levels {levels:5.1f} GFLOP ({levels / total * 100:.0f}%), "
              f"factored away: {total - levels:6.1f} GFLOP left")
    return 0


@torch.no_grad()
def conv_gflop(model: torch.nn.Module, size: tuple[int, int]) -> tuple[float, float]:
    """(all convolutions, the head conv's share over the PPM levels' channels) in GFLOP for one image."""
    flops: dict[str, float] = {}

    def hook(name):
        def count(mod, inp, out):
            k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
            flops[name] = 2.0 * out.numel() * k
        return count
    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    model.eval()(torch.randn(1, 3, *size))
    for h in handles:
        h.remove()
    head = model.cls[0]
    levels_share = (head.in_channels - model.ppm.in_channels) / head.in_channels  # channels after the backbone's
    return sum(flops.values()) / 1e9, flops["cls.0"] * levels_share / 1e9


if __name__ == "__main__":
    sys.exit(main())
