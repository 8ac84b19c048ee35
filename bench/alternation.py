"""Why does the default mode run slower when it alternates with plain fp32 eager in one process?

    python bench/alternation.py [--depth 50] [--size 473x473] [--reps 7] [--mode auto] [--flush-mb 512]

Times the default CPU mode (``--mode``, as ``pspnet predict`` runs it) four ways, in one process:

- ``alone``: back to back, as ``pspnet predict`` runs it over a folder;
- ``after eager``: each call right after one call of the plain fp32 eager model (what
  ``pspnet bench --what headline`` alternates with);
- ``after flush``: each call right after writing ``--flush-mb`` MB of memory (evicts the CPU caches,
  computes nothing);
- ``after sleep``: each call after 0.5 s idle (lets the cores drop their clocks).

If ``after flush`` is as slow as ``after eager``, the slowdown is the caches: alternating evicts
the fast mode's packed weights (tens of MB in bf16/int8) from the last-level cache, and a CPU
whose L3 holds them alone loses them to the eager model's 190 MB of fp32 weights and activations.
Running one mode over many images (eval, then predict) warms the cache again after the first call.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from pspnet import bench


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=50)
    p.add_argument("--size", default="473x473")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--mode", default="auto", help="a pspnet.bench.MODES key (default auto)")
    p.add_argument("--flush-mb", type=int, default=512, help="memory written between calls in 'after flush'")
    a = p.parse_args(argv)
    print(bench.format_machine())
    size = bench.parse_size(a.size)
    model = bench.build_model(a.depth, 19)
    x = torch.randn(1, 3, *size)
    fast = bench.make_runner(model, a.mode, x)
    buffer = torch.empty(a.flush_mb * 2 ** 20 // 4)

    def flush() -> None:
        buffer.fill_(1.0)

    between = {"alone": None, "after eager": lambda: model(x), "after flush": flush,
               "after sleep": lambda: time.sleep(0.5)}
    times: dict[str, list[float]] = {k: [] for k in between}
    with torch.no_grad():
        for _ in range(2):
            model(x)
            fast(x)
        if getattr(fast, "choice", None) is not None:
            print(fast.choice.describe())
        for _ in range(a.reps):  # rounds: every variant once per round, so drifts hit all of them
            for name, before in between.items():
                if before is not None:
                    before()
                t = time.perf_counter()
                fast(x)
                times[name].append(time.perf_counter() - t)
    alone = statistics.median(times["alone"])
    print(f"PSPNet-{a.depth} {size[0]}x{size[1]}, mode {a.mode} -> {getattr(fast, 'precision', a.mode)}/"
          f"{getattr(fast, 'backend', 'torch')}, {a.reps} rounds; flush {a.flush_mb} MB")
    for name, v in times.items():
        med = statistics.median(v)
        print(f"  {name:<12s} median {med * 1000:8.1f} ms  ({med / alone:.2f}x alone)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
