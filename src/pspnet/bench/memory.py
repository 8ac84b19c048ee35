"""Peak resident memory of prediction (whole image and sliding windows) and of a training step, each
case run several times to show it does not grow."""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch

from .inference import make_runner
from .timing import build_model
from .training import bench_training, native_training_precisions, training_setup


def _status_mb(field: str) -> float | None:
    """A ``/proc/self/status`` field (``VmRSS``, ``VmHWM``) in MB; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Set VmHWM back to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_mb("VmHWM") is not None
    except OSError:
        return False


def _peak_mb(resettable: bool) -> float:
    if resettable:
        return _status_mb("VmHWM")  # type: ignore[return-value]
    import resource
    import sys
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2 ** 20 if sys.platform == "darwin" else 1024)


def _release_freed_memory() -> None:
    gc.collect()  # what the previous case left for the collector is not this case's
    try:  # glibc keeps freed small blocks mapped; hand them back so a case starts from what is in use
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _measure_memory(case: str, fn: Callable[[], Any], n: int) -> dict[str, Any]:
    _release_freed_memory()
    resettable = _reset_peak()
    before = _status_mb("VmRSS")
    peaks, rss = [], []
    for _ in range(n):
        fn()
        peaks.append(_peak_mb(resettable))
        rss.append(_status_mb("VmRSS"))
    return {"case": case, "peak_source": "VmHWM" if resettable else "ru_maxrss", "rss_before_mb": before,
            "peak_first_mb": peaks[0], "peak_last_mb": peaks[-1], "peak_after_each_mb": peaks,
            "rss_after_each_mb": rss}


def _predict_labels(runner: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    from ..inference.testtime import predict_logits
    return predict_logits(runner, image, **kwargs).argmax(1)


def bench_memory(depth: int = 50, size: tuple[int, int] = (1024, 2048), num_classes: int = 19, images: int = 4,
                 crop: tuple[int, int] = (713, 713), stride_rate: float = 2 / 3, mode: str = "auto",
                 train: dict[str, Any] | None = None, train_precisions: Sequence[str] = ("fp32", "bf16"),
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Peak resident memory of predicting ``size`` images in ``mode`` (whole image, then sliding windows of
    ``crop``) and of :func:`bench_training`'s step, each case run ``images`` times to show it does not grow.

    ``train``: overrides of :func:`bench_training`'s model and batch arguments (depth, crop, batch,
    num_classes, head_channels, aux_channels, channels_last, root). The peak is Linux's VmHWM, reset before
    each case; elsewhere it is ``ru_maxrss`` since the process started (then a case's peak includes the
    cases before it).
    """
    import inspect

    from ..data.transforms import normalize
    if images < 1:
        raise ValueError(f"images must be >= 1, got {images}")
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (1, 3, *size), dtype=torch.uint8, generator=g)
    model = build_model(depth, num_classes)
    cases, resolved = [], {}
    for case, kwargs in (("whole", {"mode": "whole"}),
                         ("sliding", {"mode": "sliding", "crop_size": crop, "stride_rate": stride_rate})):
        # a fresh runner per case, as one `pspnet predict` run has: the first image includes whatever
        # the mode does on its first call (auto picks its mode for that input's shape)
        runner = make_runner(model, mode, normalize(image))
        c = _measure_memory("", partial(_predict_labels, runner, image, **kwargs), images)
        resolved[case] = getattr(runner, "precision", mode)
        where = f"{size[0]}x{size[1]}" if case == "whole" else f"{crop[0]}x{crop[1]} stride {stride_rate:.2f}"
        c["case"] = f"PSPNet-{depth} {mode}->{resolved[case]} {case} {where}"
        cases.append(c)
        del runner
    del model
    sig = inspect.signature(bench_training)  # bench_training's defaults stay the one source of the settings
    keys = ("depth", "crop", "batch", "num_classes", "channels_last", "root", "head_channels", "aux_channels")
    settings = {k: sig.parameters[k].default for k in keys} | (train or {})
    for p in [p for p in train_precisions if p not in native_training_precisions(train_precisions, log)[1]]:
        step = training_setup(**settings)[0]  # a fresh model per precision, as a training run would start
        cases.append(_measure_memory(f"train PSPNet-{settings['depth']} {p} batch {settings['batch']} x "
                                     f"{settings['crop'][0]}x{settings['crop'][1]}", partial(step, p), images))
        del step
    log(f"peak resident memory, MB ({cases[0]['peak_source']}, reset before each case); "
        f"{images} images (training: steps) per case; RSS = VmRSS after each")
    log(f"{'case':<48s} {'RSS before':>10s} {'peak 1st':>9s} {'peak last':>9s} {'growth':>7s}  RSS after each")
    for c in cases:
        rss = " ".join(f"{r or 0:.0f}" for r in c["rss_after_each_mb"])
        log(f"{c['case']:<48s} {c['rss_before_mb'] or 0:10.0f} {c['peak_first_mb']:9.0f} {c['peak_last_mb']:9.0f} "
            f"{c['peak_last_mb'] - c['peak_first_mb']:7.0f}  {rss}")
    if train_precisions:
        log("  training: SGD's momentum buffers appear with the first update, so steps after the first peak "
            "higher; growth after that would be a leak")
    if cases[0]["peak_source"] != "VmHWM":
        log("  note: /proc/self/clear_refs could not reset the peak here; peaks are ru_maxrss since the process "
            "started, so each case's peak includes the cases before it")
    return {"model": f"PSPNet-{depth}", "size": list(size), "num_classes": num_classes, "mode": mode,
            "resolved_precision": resolved, "crop": list(crop), "stride_rate": stride_rate, "images": images,
            "train": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}, "cases": cases}
