"""``pspnet demo``: the whole pipeline on built-in data, in a few minutes on a laptop CPU.

1. generate procedural street scenes (:mod:`pspnet.data.synthetic`) as a ``folder`` dataset;
2. train a small PSPNet (dilated ResNet-18, paper recipe: SGD, poly LR, 10x head LR, aux loss 0.4)
   with :func:`pspnet.training.trainer.train`;
3. evaluate it on held-out scenes with :func:`pspnet.inference.evaluate.evaluate` (mIoU table);
4. write colour and overlay predictions with :func:`pspnet.inference.predict.predict_paths`, the
   training curves, the weights (``model.safetensors``, usable by ``pspnet predict``) and the
   metrics (``metrics.json``) to one output folder.

Every step is the code path of the real commands; only the data and the model size are small.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .files import write_text_output

__all__ = ["DemoSettings", "FULL", "QUICK", "run_demo"]

MARKER = ".pspnet-demo"


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of one demo run (data, model, schedule)."""

    train_scenes: int = 96
    val_scenes: int = 24
    height: int = 96
    width: int = 128
    crop: int = 96
    iters: int = 400
    batch_size: int = 8
    lr: float = 0.01
    head_lr_mult: float = 10.0
    warmup_iters: int = 0
    head_channels: int = 128
    aux_channels: int = 64
    output_stride: int = 8
    val_every: int = 100
    predict_images: int = 6
    seed: int = 0


FULL = DemoSettings()
QUICK = DemoSettings(train_scenes=8, val_scenes=4, height=48, width=64, crop=48, iters=6, batch_size=4,
                     head_channels=32, aux_channels=16, val_every=0, predict_images=2)


def _prepare_out_dir(out: Path) -> None:
    """Create ``out``, or reuse it if an earlier demo wrote it; never clobber anything else."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder; pick another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise ConfigError(f"{out}: folder exists, is not empty and was not written by 'pspnet demo'; "
                          f"pick another --out or remove it")
    for sub in ("data", "run", "predictions"):
        shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by pspnet demo; safe to delete\n", encoding="utf-8")


def demo_config(data_root: Path, run_dir: Path, s: DemoSettings, class_weights: list[float] | None = None):
    """The training config of the demo, built in code (what a YAML file under configs/ would hold)."""
    from .config import Config, DataSection, EvalSection, ModelSection, TrainSection
    from .data.synthetic import CLASSES
    return Config(
        model=ModelSection(num_classes=len(CLASSES), depth=18, output_stride=s.output_stride, deep_stem=True,
                           head_channels=s.head_channels, aux_channels=s.aux_channels),
        data=DataSection(dataset="folder", root=str(data_root), train_split="train", val_split="val",
                         class_names=list(CLASSES), crop_size=(s.crop, s.crop), scale_min=0.75, scale_max=1.5,
                         rotate=5.0, blur=True, flip=True, workers=0),
        train=TrainSection(iters=s.iters, batch_size=s.batch_size, lr=s.lr, precision="auto", seed=s.seed,
                           class_weights=class_weights, head_lr_mult=s.head_lr_mult, warmup_iters=s.warmup_iters,
                           val_every=s.val_every, log_every=max(1, min(10, s.iters // 20)),
                           output_dir=str(run_dir), channels_last=True),
        eval=EvalSection())


def pixel_counts(dataset):
    """Labelled pixels per class over a dataset (numpy int64 array), as ``pspnet data check`` counts them."""
    from .data.check import check_dataset
    return check_dataset(dataset, progress=False).class_pixels


def balanced_weights(counts) -> list[float]:
    """``sqrt(median frequency / frequency)`` per class (absent classes get 1): thin classes such as
    poles and people count more without swamping the large ones."""
    import numpy as np
    freq = counts / max(int(counts.sum()), 1)
    med = float(np.median(freq[freq > 0])) if (freq > 0).any() else 1.0
    return [round(float(np.sqrt(med / f)), 3) if f > 0 else 1.0 for f in freq]


def majority_miou(dataset) -> float:
    """mIoU of always predicting the most frequent class: the 'chance' baseline of the demo."""
    counts = pixel_counts(dataset)
    present = int((counts > 0).sum())
    return float(counts.max() / counts.sum() / present)


def run_demo(out_dir: str | Path = "pspnet_demo", *, quick: bool = False, settings: DemoSettings | None = None,
             progress: bool = True, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the demo; returns a summary (mIoU, baseline, timings, paths) also written to ``summary.json``."""
    from .data.datasets import build_dataset, dataset_info
    from .data.synthetic import CLASSES, PALETTE, SyntheticSpec, write_dataset
    from .inference.evaluate import evaluate, format_table
    from .inference.predict import predict_paths
    from .models.weights import load_weights, save_weights
    from .training.trainer import train

    s = settings or (QUICK if quick else FULL)
    out = Path(out_dir).resolve()
    _prepare_out_dir(out)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()

    # 1. data
    t0 = time.perf_counter()
    data_root = write_dataset(out / "data", SyntheticSpec(train=s.train_scenes, val=s.val_scenes, height=s.height,
                                                          width=s.width, seed=s.seed))
    timings["data_s"] = time.perf_counter() - t0
    echo(f"[1/4] generated {s.train_scenes} training and {s.val_scenes} held-out street scenes "
         f"({s.width}x{s.height}, {len(CLASSES)} classes) in {data_root} ({timings['data_s']:.1f} s)")

    # 2. training
    t0 = time.perf_counter()
    info = dataset_info("folder", len(CLASSES), CLASSES, PALETTE)
    class_w = balanced_weights(pixel_counts(build_dataset("folder", data_root, "train", info=info)))
    cfg = demo_config(data_root, out / "run", s, class_w)
    echo(f"[2/4] training PSPNet (ResNet-18, output stride {s.output_stride}) for {s.iters} iterations of "
         f"{s.batch_size} crops of {s.crop}x{s.crop}; class weights "
         + ", ".join(f"{n} {w:.2f}" for n, w in zip(CLASSES, class_w)) + " ...")
    result = train(cfg, device="cpu", progress=progress)
    timings["train_s"] = time.perf_counter() - t0
    model, _ = load_weights(result.weights)
    weights = out / "model.safetensors"
    save_weights(model, weights, class_names=CLASSES, palette=PALETTE,
                 extra={"dataset": "pspnet-demo synthetic streets", "settings": asdict(s)})
    for name in ("last.pt", "best.safetensors", "final.safetensors"):  # the demo keeps one weight file
        (out / "run" / name).unlink(missing_ok=True)
    echo(f"      trained in {timings['train_s']:.1f} s; weights: {weights}")

    # 3. evaluation on the held-out scenes
    t0 = time.perf_counter()
    val = build_dataset("folder", data_root, "val", info=info)
    results = evaluate(model, val, num_classes=len(CLASSES), class_names=CLASSES, progress=False)
    baseline = majority_miou(val)
    timings["eval_s"] = time.perf_counter() - t0
    write_text_output(out / "metrics.json", json.dumps(results, indent=1))
    echo(f"[3/4] evaluated on {len(val)} held-out scenes ({timings['eval_s']:.1f} s):")
    echo(format_table(results))
    echo(f"      mIoU {results['mIoU']:.3f} vs {baseline:.3f} for always guessing the most frequent class")

    # 4. predictions and curves
    t0 = time.perf_counter()
    images = [p for p, _ in val.pairs[: s.predict_images]]
    written = predict_paths(model, images, out / "predictions", class_names=CLASSES, palette=PALETTE,
                            progress=False)
    curves = out / "curves.png"
    if (out / "run" / "curves.png").is_file():
        shutil.copyfile(out / "run" / "curves.png", curves)
    timings["predict_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start
    echo(f"[4/4] wrote {len(images)} colour/overlay predictions to {out / 'predictions'} and the training "
         f"curves to {curves}")

    summary = {"mIoU": results["mIoU"], "mAcc": results["mAcc"], "allAcc": results["allAcc"],
               "majority_class_mIoU": baseline, "settings": asdict(s), "timings": timings,
               "weights": str(weights), "curves": str(curves), "predictions": [str(p) for p in written],
               "output_dir": str(out)}
    write_text_output(out / "summary.json", json.dumps(summary, indent=1))
    echo(f"done in {timings['total_s']:.0f} s. Output folder: {out}")
    return summary


def with_overrides(base: DemoSettings, **kw: Any) -> DemoSettings:
    """``base`` with some fields replaced (None values ignored)."""
    return replace(base, **{k: v for k, v in kw.items() if v is not None})
