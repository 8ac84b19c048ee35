"""Training step time per precision and its share of the matmul peak measured in the same run."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from .. import capability, cpu
from ..models import PSPNet, PSPNetConfig
from .timing import time_calls


def matmul_gflops(dtype: torch.dtype = torch.bfloat16, n: int = 2048, reps: int = 10, warmup: int = 3) -> float:
    """GFLOP/s of an ``n x n @ n x n`` ``torch.matmul`` in ``dtype`` (2 n^3 FLOP over the median time):
    the machine's practical peak for that dtype."""
    g = torch.Generator().manual_seed(0)
    x, y = (torch.randn(n, n, generator=g).to(dtype) for _ in range(2))
    med = statistics.median(time_calls(partial(torch.matmul, x, y), reps=reps, warmup=warmup))
    return 2 * n ** 3 / med / 1e9


def native_training_precisions(precisions: Sequence[str], log: Callable[[str], None] = print
                               ) -> tuple[list[str], dict[str, str]]:
    """(the ``precisions`` this CPU trains in natively, why each other one is left out)."""
    skipped = {p: capability.check(p).why for p in precisions
               if p in capability.PRECISIONS and not capability.check(p).native}
    for p, why in skipped.items():
        log(f"  {p} training not timed here: {why}")
    return [p for p in precisions if p not in skipped], skipped


def training_setup(depth: int, crop: tuple[int, int], batch: int, num_classes: int, channels_last: bool,
                    root: str | Path | None, head_channels: int, aux_channels: int):
    """(step(precision) -> seconds, count_flops() -> FLOP of one step) for a fresh PSPNet in train mode."""
    from torch.utils.flop_counter import FlopCounterMode

    from ..data.transforms import normalize
    from ..models import PSPNetLoss
    from ..training.schedule import sgd
    images, labels = _training_batch(crop, batch, num_classes, root)
    cpu.keep_freed_memory()  # as the trainer does
    torch.manual_seed(0)
    model = PSPNet(PSPNetConfig(num_classes=num_classes, depth=depth, head_channels=head_channels,
                                aux_channels=aux_channels)).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = sgd([{"params": list(model.parameters())}], lr=1e-3, momentum=0.9, weight_decay=1e-4)  # the trainer's
    criterion = PSPNetLoss(0.4, 255, align_corners=model.config.align_corners)
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def forward_backward(dtype: torch.dtype | None) -> None:
        x = normalize(images).contiguous(memory_format=fmt)
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            out = model(x, upsample=False)  # as the trainer does: the loss upsamples
        loss, _ = criterion(out, labels)
        loss.backward()

    def step(precision: str) -> float:
        dtype = cpu.resolve_precision(precision, torch.device("cpu"))
        t = time.perf_counter()
        forward_backward(dtype)
        opt.step()
        return time.perf_counter() - t

    def count_flops() -> float:
        # the counted ops (convolutions, matrix products and their gradients) do the same work in any
        # dtype; no optimizer step, so counting leaves the weights as they were
        with FlopCounterMode(display=False) as counter:
            forward_backward(None)
        opt.zero_grad(set_to_none=True)
        return float(counter.get_total_flops())

    return step, count_flops


def bench_training(depth: int = 18, crop: tuple[int, int] = (192, 256), batch: int = 8, num_classes: int = 11,
                   steps: int = 4, warmup: int = 1, precisions: Sequence[str] = ("fp32", "bf16"),
                   channels_last: bool = True, root: str | Path | None = None, head_channels: int = 256,
                   aux_channels: int = 128, matmul_n: int = 2048, matmul_reps: int = 10,
                   peak_precision: str | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Seconds per SGD step (forward with the aux head, loss, backward, update) per precision, and the
    step's FLOP rate as a fraction of the matmul peak of ``peak_precision`` (default: the precision
    ``train.precision=auto`` trains in here) measured in the same run. Precisions this CPU does not run
    natively are left out with the reason (emulated bf16 training is many times slower than fp32).

    Defaults follow the CamVid CPU recipe (camvid/pspnet_r18_cpu). With ``root`` the
    batch is real CamVid training crops (the recipe's augmentation), otherwise random pixels; the
    step time does not depend on pixel values. Precisions alternate step by step.

    The bf16 peak is read after every round of steps (``matmul_reps`` timed matmuls each), not once:
    on a host whose matrix throughput drifts (a VM's AMX units measured 270-1650 GFLOP/s within
    minutes, docs/benchmarks.md) a single reading can flatter or sink the fraction. Two fractions are
    reported: the median step rate over the median peak reading, and the median over rounds of each
    step's rate over the peak read right after it (``fraction_per_round``), which a drift moves least.
    """
    precisions, skipped = native_training_precisions(precisions, log)
    if peak_precision is None:
        peak_precision = "bf16" if cpu.resolve_precision("auto", torch.device("cpu")) == torch.bfloat16 else "fp32"
    peak_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[peak_precision]
    step, count_flops = training_setup(depth, crop, batch, num_classes, channels_last, root, head_channels,
                                        aux_channels)
    flop = count_flops()
    for p in precisions:
        for _ in range(warmup):
            step(p)
    times: dict[str, list[float]] = {p: [] for p in precisions}
    readings: list[float] = []
    for _ in range(steps):
        for p in precisions:
            times[p].append(step(p))
        readings.append(matmul_gflops(peak_dtype, matmul_n, matmul_reps, warmup=1))
    peak = {peak_precision: statistics.median(readings)}
    if peak_precision != "fp32":
        peak["fp32"] = matmul_gflops(torch.float32, matmul_n, matmul_reps)
    med = {p: statistics.median(v) for p, v in times.items()}
    rate = {p: flop / m / 1e9 for p, m in med.items()}
    fraction = {p: r / peak[peak_precision] for p, r in rate.items()}
    per_round = {p: statistics.median(flop / t / 1e9 / r for t, r in zip(v, readings)) for p, v in times.items()}
    log(f"training PSPNet-{depth} ({num_classes} classes, head {head_channels}), batch {batch} x {crop[0]}x{crop[1]} "
        f"{'CamVid crops' if root else 'random pixels'}, {steps} alternating steps after {warmup} warm-up each")
    log(f"  matmul peak {matmul_n}^3 in this run: " + ", ".join(f"{p} {v:.1f} GFLOP/s" for p, v in peak.items())
        + f" ({peak_precision}: the precision training uses here; median of {len(readings)} readings, one after "
        f"each round of steps: {min(readings):.0f}-{max(readings):.0f}); one step (forward with aux head, loss, "
        f"backward) counts {flop / 1e9:.1f} GFLOP")
    from ..models import kernels
    from ..models.loss import upsampled_ce_available
    from ..models.max_pool import max_pool_kernel_available
    from ..models.norm_act import fused_bn_available

    def on(flag: bool) -> str:
        return "on" if flag else "off"
    log(f"  CPU kernels: batch norm + ReLU {on(fused_bn_available())}, upsampled cross-entropy "
        f"{on(upsampled_ce_available())}, max pooling {on(max_pool_kernel_available())}, pyramid pooling's "
        f"backward as matrix products {on(kernels.enabled())}; malloc keeps freed memory: "
        f"{'yes' if cpu.keep_freed_memory() else 'no'}")
    for p in precisions:
        log(f"  {p:<5s} median {med[p]:7.3f} s/step  ({batch / med[p]:6.2f} images/s), {flop / 1e9:.1f} GFLOP/step, "
            f"{rate[p]:.1f} GFLOP/s = {fraction[p]:.2f} of the {peak_precision} matmul peak "
            f"({peak[peak_precision]:.1f} GFLOP/s, {matmul_n}^3 in this run); per round against the peak read after "
            f"it: {per_round[p]:.2f}")
    res = {"depth": depth, "crop": list(crop), "batch": batch, "steps": steps, "times_s": times,
           "median_s": med, "images_per_s": {p: batch / m for p, m in med.items()},
           "gflop_per_step": flop / 1e9, "gflops": rate, "matmul_n": matmul_n, "matmul_peak_gflops": peak,
           "peak_precision": peak_precision, "peak_readings": readings, "fraction_of_peak": fraction,
           "fraction_per_round": per_round, "skipped": skipped,
           "fused_bn_relu": fused_bn_available(), "fused_upsampled_ce": upsampled_ce_available(),
           "max_pool_kernel": max_pool_kernel_available(),
           "malloc_keeps_freed_memory": cpu.keep_freed_memory()}
    if "fp32" in med and "bf16" in med:
        res["bf16_speedup"] = med["fp32"] / med["bf16"]
        log(f"  bf16 speedup over fp32: {res['bf16_speedup']:.2f}x")
    return res


def _training_batch(crop: tuple[int, int], batch: int, num_classes: int, root: str | Path | None):
    if root is None:
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (batch, 3, *crop), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, num_classes, (batch, *crop), generator=g)
        return images, labels
    from ..data.datasets import build_dataset
    from ..data.transforms import TrainTransform, to_tensors
    ds = build_dataset("camvid", root, "train")
    tf = TrainTransform(crop, (0.375, 1.0))
    imgs, lbls = [], []
    for i in range(batch):
        tf.seed(i)
        im, lb = to_tensors(*tf(*ds.load(i)))
        imgs.append(im)
        lbls.append(lb)
    return torch.stack(imgs), torch.stack(lbls)
