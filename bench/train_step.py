"""Training-step time, bf16 autocast vs fp32, in one process on the same CamVid crops.

One step = forward + loss + backward + SGD update, exactly the engine's ``Trainer._step``. The two
precisions alternate step by step (fp32, bf16, fp32, ...) so a change in machine load hits both;
the result is the median over ``--steps`` steps after ``--warmup`` untimed ones, and the ratio
fp32 / bf16 (> 1: bf16 is faster). Prints the CPU model and its bf16-related flags.

    python bench/train_step.py                                   # camvid/pspnet_r18_cpu
    python bench/train_step.py --steps 20 --batch 8 --crop 192 256 --threads 2
    python bench/train_step.py --device cuda --config cityscapes/pspnet_r50 --batch 2

Without the config's dataset on disk it uses random images of CamVid's size (and says so).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pspnet import cpu
from pspnet.config import load_config
from pspnet.training.trainer import Trainer


def synthetic_camvid(root: Path, n: int = 16) -> Path:
    rng = np.random.default_rng(0)
    for sub in ("images", "labels"):
        (root / "train" / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = rng.integers(0, 256, (360, 480, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "train" / "images" / f"{i}.png")
        Image.fromarray(rng.integers(0, 11, (360, 480), dtype=np.uint8)).save(root / "train" / "labels" / f"{i}.png")
    return root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="camvid/pspnet_r18_cpu")
    p.add_argument("--steps", type=int, default=10, help="timed steps per precision")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per precision first")
    p.add_argument("--batch", type=int, help="batch size (default: the config's)")
    p.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), help="crop size (default: the config's)")
    p.add_argument("--threads", type=int, help="torch threads (default: the config's train.threads or all)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (bf16 vs fp32 autocast on either)")
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("overrides", nargs="*", help="config overrides section.key=value")
    args = p.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="pspnet_bench_"))
    ov = list(args.overrides) + ["data.workers=0", "data.val_split=", "train.iters=1000000",
                                 f"train.output_dir={tmp / 'out'}"]
    if args.batch:
        ov.append(f"train.batch_size={args.batch}")
    if args.crop:
        ov.append(f"data.crop_size=[{args.crop[0]},{args.crop[1]}]")
    if args.threads:
        ov.append(f"train.threads={args.threads}")
    if args.no_channels_last:
        ov.append("train.channels_last=false")
    cfg = load_config(args.config, ov)
    data_note = f"{cfg.data.dataset} at {cfg.data.root}"
    if not Path(cfg.data.root).exists():
        root = synthetic_camvid(tmp / "data")
        cfg = load_config(args.config, ov + ["data.dataset=folder", f"data.root={root}", "model.num_classes=11",
                                             "train.class_weights=null"])
        data_note = f"random 360x480 images (no {data_note})"

    trainers = {}
    for prec in ("fp32", "bf16"):
        trainers[prec] = Trainer(cfg.model_copy(update={"train": cfg.train.model_copy(update={"precision": prec})}),
                                 device=args.device, progress=False)
    # the same augmented crops for both precisions
    loader = trainers["fp32"]._loader(0, 0)
    batches = []
    for images, labels in loader:
        batches.append((images, labels))
        if len(batches) == 4:
            break

    def step(prec: str, i: int) -> float:
        t = trainers[prec]
        images, labels = batches[i % len(batches)]
        if t.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        t._step(images, labels)
        if t.device.type == "cuda":
            torch.cuda.synchronize()
        t.iteration += 1
        return time.perf_counter() - t0

    for i in range(args.warmup):
        for prec in trainers:
            step(prec, i)
    times: dict[str, list[float]] = {prec: [] for prec in trainers}
    for i in range(args.steps):
        for prec in trainers:
            times[prec].append(step(prec, args.warmup + i))

    from pspnet import capability
    t = cfg.train
    bf16 = capability.check("bf16")
    print(f"CPU: {cpu.cpu_model()}; flags in /proc/cpuinfo: {' '.join(cpu.reported_flags()) or 'none of interest'}; "
          f"bf16 here: {'native' if bf16.native else bf16.why}")
    if args.device != "cpu" and torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name()}")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, python {sys.version.split()[0]}")
    print(f"model: PSPNet-{cfg.model.depth} ({args.config}), batch {t.batch_size}, crop {list(cfg.data.crop_size)}, "
          f"channels_last {t.channels_last}, device {args.device}; data: {data_note}")
    print(f"{args.steps} timed steps per precision after {args.warmup} warm-up steps, alternating")
    for prec, ts in times.items():
        print(f"  {prec}: median {statistics.median(ts) * 1000:.0f} ms/step "
              f"(min {min(ts) * 1000:.0f}, max {max(ts) * 1000:.0f})")
    ratio = statistics.median(times["fp32"]) / statistics.median(times["bf16"])
    print(f"fp32 / bf16 step time: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
