"""Inference latency of PSPNet on this machine, per model, input size, precision and backend.

    python bench/inference_latency.py                      # headline: PSPNet-50 473x473 fp32 eager vs default
    python bench/inference_latency.py --depths 18,50,101 --sizes 473x473,713x713,512x1024 \
        --modes eager,fp32,bf16,ort-fp32 --reps 3          # the table

Prints the CPU model, core count and flags first; every number is a median of wall-clock times.
Same as ``pspnet bench --what headline,inference``.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from pspnet import bench


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--depths", default="", help="comma list (18,50,101); empty: headline only")
    p.add_argument("--sizes", default="473x473,713x713,512x1024", help="HxW comma list")
    p.add_argument("--modes", default="eager,fp32,bf16", help=f"comma list of {', '.join(bench.MODES)}")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--headline-reps", type=int, default=7)
    p.add_argument("--no-headline", action="store_true")
    p.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    p.add_argument("--out", help="JSON results")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    res = {"machine": bench.machine_info(), "command": " ".join(["python"] + sys.argv)}
    print(bench.format_machine(res["machine"]))
    if not a.no_headline:
        res["headline"] = bench.bench_headline(reps=a.headline_reps)
    if a.depths:
        res["inference"] = bench.bench_inference([int(d) for d in a.depths.split(",")],
                                                 [bench.parse_size(s) for s in a.sizes.split(",")],
                                                 a.modes.split(","), reps=a.reps)
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
