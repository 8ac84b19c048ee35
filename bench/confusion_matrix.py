"""Time ``ConfusionMatrix.update`` on one 1024x2048 label map (a Cityscapes frame); target < 10 ms.

    python bench/confusion_matrix.py [--reps 20] [--classes 19]
"""

from __future__ import annotations

import argparse
import sys

from pspnet import bench

TARGET_MS = 10.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--classes", type=int, default=19)
    p.add_argument("--size", default="1024x2048", help="HxW")
    a = p.parse_args(argv)
    print(bench.format_machine())
    res = bench.bench_confusion(bench.parse_size(a.size), a.classes, a.reps)
    worst = max(v["median_ms"] for k, v in res.items() if isinstance(v, dict))
    print(f"slowest median {worst:.2f} ms: {'within' if worst < TARGET_MS else 'OVER'} the {TARGET_MS:.0f} ms target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
