"""Peak memory (RSS) of sliding-window prediction on a huge image, e.g. 8000 x 6000.

Each measurement runs in a fresh child process and reports that process's peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``), its RSS before inference (interpreter + torch +
model + the uint8 input image) and the wall time. Levels:

* ``sliding``        -- :func:`pspnet.inference.sliding.sliding_window` on the normalised image, then argmax;
* ``predict_logits`` -- :func:`pspnet.inference.testtime.predict_logits` with ``mode="sliding"`` (what
  ``pspnet eval``/``predict`` call: adds the softmax average), then argmax;
* ``predict_paths``  -- ``pspnet predict``'s function on an image file, writing label/colour/overlay PNGs.

The printed "model" bound is what the output-sized buffers of each level need, computed from the
image size and class count (see docs/reliability.md); the measured peak must stay below
``rss_before + bound + window activations``.

Usage (full measurement: 616 s for predict_logits with --stride-rate 1.0 on 2 shared CPU cores; the
default stride 2/3 runs about 2.2x as many windows, the memory bound is the same):
    python bench/sliding_memory.py --size 8000x6000 --crop 512 --levels sliding predict_logits
Small version (seconds):
    python bench/sliding_memory.py --size 1000x750 --crop 256
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def buffer_bound_mb(level: str, h: int, w: int, c: int) -> float:
    """Bytes of the output-sized buffers a level holds at once (float32 = 4 bytes per value)."""
    px = h * w
    normalised = 3 * 4 * px
    logits = c * 4 * px
    count = 4 * px
    argmax = 8 * px  # int64 labels
    if level == "sliding":
        total = normalised + logits + count + argmax
    elif level == "predict_logits":
        total = normalised + logits + count + logits + argmax  # + the softmax probabilities
    else:  # predict_paths: + the decoded image array, colour and overlay images
        total = normalised + logits + count + logits + argmax + 3 * px * 3
    return total / 2**20


def child(args: argparse.Namespace) -> None:
    import torch

    from pspnet.models import PSPNet, PSPNetConfig

    torch.set_num_threads(args.threads)
    w, h = args.size
    model = PSPNet(PSPNetConfig(num_classes=args.classes, depth=args.depth, head_channels=args.head,
                                aux_channels=args.head // 2)).eval()
    crop = (args.crop, args.crop)
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    if args.level == "predict_paths":
        import numpy as np
        from PIL import Image

        from pspnet.inference.predict import predict_paths
        tmp = Path(tempfile.mkdtemp())
        img = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g).numpy()
        Image.fromarray(img).save(tmp / "huge.png", compress_level=1)
        del img
        before = rss_mb()
        t0 = time.perf_counter()
        out = predict_paths(model, [tmp / "huge.png"], tmp / "out", class_names=[str(i) for i in range(args.classes)],
                            palette=[(i, i, i) for i in range(args.classes)], mode="sliding", crop_size=crop,
                            progress=False)
        assert not out.failed, out.failed
        shape = list(np.asarray(Image.open(tmp / "out" / "huge_label.png")).shape)
    else:
        img = torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8, generator=g)
        before = rss_mb()
        t0 = time.perf_counter()
        with torch.no_grad():
            if args.level == "sliding":
                from pspnet.data.transforms import normalize
                from pspnet.inference.sliding import sliding_window
                logits = sliding_window(model, normalize(img), crop, args.stride_rate)
            else:
                from pspnet.inference.testtime import predict_logits
                logits = predict_logits(model, img, mode="sliding", crop_size=crop, stride_rate=args.stride_rate)
            label = logits.argmax(1)
        shape = list(label.shape)
    print(json.dumps({"level": args.level, "peak_mb": round(peak_mb(), 1), "rss_before_mb": round(before, 1),
                      "seconds": round(time.perf_counter() - t0, 1), "output_shape": shape}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="8000x6000", help="WIDTHxHEIGHT of the image (default 8000x6000)")
    p.add_argument("--crop", type=int, default=512, help="sliding-window crop (square)")
    p.add_argument("--stride-rate", type=float, default=2 / 3)
    p.add_argument("--classes", type=int, default=11, help="classes (CamVid: 11)")
    p.add_argument("--depth", type=int, default=18)
    p.add_argument("--head", type=int, default=256, help="head channels (the CamVid CPU recipe uses 256)")
    p.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1))
    p.add_argument("--levels", nargs="+", default=["sliding", "predict_logits"],
                   choices=["sliding", "predict_logits", "predict_paths"])
    p.add_argument("--level", help=argparse.SUPPRESS)  # child mode
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    args.size = tuple(int(v) for v in args.size.lower().split("x"))
    if args.level:
        child(args)
        return
    w, h = args.size
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"image {w}x{h} ({w * h / 1e6:.1f} Mpx), crop {args.crop}, stride rate {args.stride_rate:.3f}, "
          f"{args.classes} classes, PSPNet-{args.depth} (head {args.head}), {args.threads} thread(s)")
    rows = []
    for level in args.levels:
        cmd = [sys.executable, __file__, "--level", level, *sys.argv[1:]]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            print(f"{level}: failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
            continue
        res = json.loads(r.stdout.strip().splitlines()[-1])
        res["buffer_bound_mb"] = round(buffer_bound_mb(level, h, w, args.classes), 1)
        rows.append(res)
        print(f"{level:15s} peak RSS {res['peak_mb']:8.1f} MB  (before inference {res['rss_before_mb']:7.1f} MB, "
              f"output-sized buffers {res['buffer_bound_mb']:7.1f} MB, peak - before - buffers "
              f"{res['peak_mb'] - res['rss_before_mb'] - res['buffer_bound_mb']:7.1f} MB)  {res['seconds']:7.1f} s",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": rows}, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
