"""The CPU's matrix-product throughput in fp32 and bf16 (GFLOP/s): the ceiling for PSPNet's convolutions.

    python bench/matmul_peak.py [--n 2048] [--reps 10]

PSPNet-50 at 473x473 is about 320 GFLOP per image (Zhao et al. 2017; the issue's figure); its
convolutions are matrix products, so latency / GFLOP against these numbers says how close to the
hardware a mode runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

from pspnet import bench


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=2048, help="square matrix size")
    p.add_argument("--reps", type=int, default=10)
    a = p.parse_args(argv)
    print(bench.format_machine())
    for dtype in (torch.float32, torch.bfloat16):
        x, y = torch.randn(a.n, a.n, dtype=dtype), torch.randn(a.n, a.n, dtype=dtype)
        med = statistics.median(bench.time_calls(lambda: x @ y, reps=a.reps, warmup=3))
        print(f"{a.n}x{a.n} @ {a.n}x{a.n} {str(dtype).removeprefix('torch.'):<9s} median {med * 1000:7.2f} ms  "
              f"{2 * a.n ** 3 / med / 1e9:7.1f} GFLOP/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
