"""Decoded + augmented training samples per second on CamVid, for 0/1/2 DataLoader workers.

Run it when the CPU is otherwise idle (numbers from a busy machine mean little):

    python bench/data_throughput.py --data-root ../shared/data/camvid

Each configuration iterates "epochs" of ``--epoch-len`` samples for about ``--seconds`` seconds,
so the cost of starting worker processes at every epoch (``persistent_workers=False``, what a
short epoch pays) shows against persistent workers. Rows:

* ``decode``: PNG decoding and label mapping only (``SegmentationDataset.load``), main process;
* ``augment``: the paper's augmentation on pre-decoded samples, main process;
* ``workers=N``: decode + augment + tensor conversion through a DataLoader, as in training.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from pspnet.data.datasets import build_dataset  # noqa: E402
from pspnet.data.transforms import TrainTransform, to_tensors  # noqa: E402


class Augmented(Dataset):
    """What the trainer feeds its DataLoader: decode, map, augment, convert to tensors."""

    def __init__(self, base, transform: TrainTransform, length: int) -> None:
        self.base, self.transform, self.length = base, transform, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        image, label = self.base.load(i % len(self.base))
        self.transform.seed(i)
        return to_tensors(*self.transform(image, label))


def timed(fn, seconds: float) -> tuple[int, float]:
    """Call ``fn()`` (which returns a sample count) until ``seconds`` have passed; (samples, elapsed)."""
    n, t0 = 0, time.perf_counter()
    while True:
        n += fn()
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return n, dt


def timed_loader(loader: DataLoader, seconds: float) -> tuple[int, float]:
    """One untimed warm-up epoch (first worker start, page cache), then :func:`timed` epochs of
    ``loader``. The loader, and with it its worker processes, ends when this returns."""
    def epoch() -> int:
        return sum(x.shape[0] for x, _ in loader)

    epoch()
    return timed(epoch, seconds)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", "--root", dest="root", default="../shared/data/camvid",
                   help="CamVid folder (SegNet layout)")
    p.add_argument("--split", default="train")
    p.add_argument("--crop", type=int, nargs=2, default=(360, 360), metavar=("H", "W"))
    p.add_argument("--scale", type=float, nargs=2, default=(0.5, 2.0), metavar=("MIN", "MAX"))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epoch-len", type=int, default=96, help="samples per DataLoader epoch")
    p.add_argument("--seconds", type=float, default=15.0, help="measuring time per configuration")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args(argv)

    torch.set_num_threads(1)
    base = build_dataset("camvid", a.root, a.split)
    transform = TrainTransform(a.crop, a.scale)
    print(f"# python bench/data_throughput.py {' '.join(sys.argv[1:])}")
    print(f"# {platform.node()} {os.cpu_count()} CPUs, torch {torch.__version__}, CamVid {a.split} "
          f"({len(base)} images), crop {a.crop[0]}x{a.crop[1]}, scale {a.scale[0]}-{a.scale[1]}, "
          f"batch {a.batch_size}, epochs of {a.epoch_len}, {a.seconds:g} s per row")
    rows = []

    def report(name: str, n: int, dt: float) -> None:
        rows.append({"config": name, "samples": n, "seconds": round(dt, 3), "samples_per_s": round(n / dt, 1)})
        print(f"{name:<36} {n / dt:8.1f} samples/s  ({n} in {dt:.1f} s)", flush=True)

    idx = iter(range(10 ** 9))
    report("decode (main process)", *timed(lambda: (base.load(next(idx) % len(base)), 1)[1], a.seconds))
    cached = [base.load(i) for i in range(min(16, len(base)))]
    k = iter(range(10 ** 9))

    def augment_one() -> int:
        i = next(k)
        transform.seed(i)
        transform(*cached[i % len(cached)])
        return 1

    report("augment (main process, pre-decoded)", *timed(augment_one, a.seconds))

    ds = Augmented(base, transform, a.epoch_len)
    for w in a.workers:
        for persistent in ([False, True] if w else [False]):
            loader = DataLoader(ds, batch_size=a.batch_size, shuffle=True, num_workers=w, drop_last=True,
                                persistent_workers=persistent, prefetch_factor=4 if w else None)
            name = f"workers={w}" + (" persistent" if persistent else "") + " (decode+augment)"
            report(name, *timed_loader(loader, a.seconds))
            del loader  # its worker processes end before the next configuration starts its own
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump({"args": vars(a), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
