"""``pspnet bench``: inference latency, training step time and its share of the matmul peak, peak memory,
confusion-matrix update; prints the machine."""

from __future__ import annotations

import argparse

from . import options as opt
from .common import add_data_root


def run(args: argparse.Namespace) -> int:
    import json

    import torch

    from .. import bench
    from ..errors import ConfigError
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        sizes = [bench.parse_size(s) for s in args.sizes.split(",")]
        depths = [int(d) for d in args.depths.split(",")]
    except ValueError as e:
        raise ConfigError(f"--sizes/--depths: {e}") from None
    modes = args.modes.split(",")
    bad = [m for m in modes if m not in bench.MODES]
    if bad:
        raise ConfigError(f"unknown --modes {bad}; choose from {', '.join(bench.MODES)}")
    what = set(args.what.split(","))
    try:
        memory_size = bench.parse_size(args.memory_size)
        memory_crop = bench.parse_size(args.memory_crop)
    except ValueError as e:
        raise ConfigError(f"--memory-size/--memory-crop: {e}") from None
    unknown = what - {"headline", "inference", "train", "memory", "cm"}
    if unknown:
        raise ConfigError(f"unknown --what {sorted(unknown)}; choose from headline, inference, train, memory, cm")
    reps = args.reps or 5
    results = {"machine": bench.machine_info()}
    print(bench.format_machine(results["machine"]))
    if "headline" in what:
        results["headline"] = bench.bench_headline(reps=reps)
    if "inference" in what:
        results["inference"] = bench.bench_inference(depths, sizes, modes, reps=reps)
    if "train" in what:
        results["train"] = bench.bench_training(steps=reps, root=args.data_root)
    if "memory" in what:
        results["memory"] = bench.bench_memory(args.memory_depth, memory_size, images=args.reps or 4,
                                               crop=memory_crop, train={"root": args.data_root})
    if "cm" in what:
        results["confusion_matrix"] = bench.bench_confusion()
    if args.out:
        from ..files import write_text_output
        text = json.dumps(results, indent=2)
        write_text_output(args.out, text + "\n")
        print(f"results: {args.out}")
    return 0


def add_parser(sub) -> None:
    bn = sub.add_parser("bench", help="CPU/GPU speed: inference latency per precision/backend, training step "
                                      "time and its share of the matmul peak, peak memory, confusion-matrix "
                                      "update; prints the machine")
    bn.add_argument("--what", default="headline",
                    help="comma list of: headline (PSPNet-50 473x473 fp32 eager vs default mode), inference, "
                         "train, memory (peak RSS of prediction and of a training step), cm (default: headline)")
    bn.add_argument("--depths", default="18,50,101", help="for --what inference (default 18,50,101)")
    bn.add_argument("--sizes", default="473x473,713x713,512x1024", help="HxW list for --what inference")
    bn.add_argument("--modes", default="eager,fp32,bf16",
                    help="for --what inference: eager (plain fp32 model), auto, fp32, bf16, fp32-unfused, "
                         "bf16-unfused, fp32-unfactored, bf16-unfactored, fp32+compile, bf16+compile, "
                         "int8 (torch, needs torchao), int8-unfactored, ort-fp32, ort-int8, ort-fp32-unfactored, "
                         "ort-int8-unfactored (default eager,fp32,bf16)")
    bn.add_argument("--reps", type=opt.int_in(1, 10**6),
                    help="timed repetitions (training: steps) per case (default 5); memory: images per case "
                         "(default 4)")
    bn.add_argument("--memory-size", default="1024x2048", help="HxW image for --what memory (default 1024x2048)")
    bn.add_argument("--memory-depth", type=int, default=50, help="PSPNet depth for --what memory (default 50)")
    bn.add_argument("--memory-crop", default="713x713",
                    help="sliding-window crop for --what memory (default 713x713, Cityscapes; stride rate 2/3)")
    bn.add_argument("--threads", type=opt.thread_count, help="torch threads (default: all cores)")
    add_data_root(bn, "CamVid: time training on real crops instead of random pixels")
    bn.add_argument("--out", type=opt.output_file, help="also write the results as JSON here")
    bn.set_defaults(func=run)
